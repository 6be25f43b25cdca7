"""What a run ran on: date, command, machine, versions, source revision."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from . import nginx, wrk
from .hotpath import py_spy

PACKAGES = ("x402-aggregator", "aiohttp", "uvicorn", "uvloop", "httptools", "starlette", "orjson")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Machine:
    date: str
    command: str
    nproc: int
    cpu_model: str
    kernel: str
    memory_gib: float
    versions: dict[str, str]
    revision: str


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False, cwd=ROOT
        )
    except OSError:
        return ""
    return (out.stdout or out.stderr).strip()


def revision() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    head = _run([git, "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = _run([git, "status", "--porcelain", "--untracked-files=no", "--", "src"])
    return f"{head} (src/ has uncommitted changes)" if dirty else head


def _memory_gib() -> float:
    return float(psutil.virtual_memory().total) / 2**30


def collect(command: str) -> Machine:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    for name, get in (("nginx", nginx.version), ("wrk", wrk.version)):
        try:
            versions[name] = get()
        except (OSError, RuntimeError):
            versions[name] = "not installed"
    versions["py-spy"] = _run([py_spy(), "--version"]).removeprefix("py-spy ") or "not installed"
    return Machine(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        nproc=os.cpu_count() or 0,
        cpu_model=cpu_model(),
        kernel=f"{platform.system()} {platform.release()}",
        memory_gib=_memory_gib(),
        versions=versions,
        revision=revision(),
    )


class CpuAccount:
    """CPU used during the run by the whole machine, by this suite, and stolen by the hypervisor.

    Ours is this process plus every child it has reaped (all benchmark processes are), so the
    difference to the machine's busy time is other people's work on a shared box.
    """

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._ours = self._our_seconds()
        self._machine = psutil.cpu_times()

    @staticmethod
    def _our_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def report(self) -> tuple[float, float, float]:
        """(other processes, ours, steal), each in cores on average."""
        wall = time.monotonic() - self._wall
        now = psutil.cpu_times()
        busy = sum(
            getattr(now, f) - getattr(self._machine, f)
            for f in ("user", "nice", "system", "irq", "softirq")
        )
        steal = getattr(now, "steal", 0.0) - getattr(self._machine, "steal", 0.0)
        ours = self._our_seconds() - self._ours
        return max(busy - ours, 0.0) / wall, ours / wall, steal / wall


def command_line() -> str:
    return " ".join(["python -m bench", *sys.argv[1:]])
