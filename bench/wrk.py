"""wrk, the closed-loop load generator of the throughput section (C, epoll, ``-t1 -c32``).

The POST body and a ``done`` hook that prints the summary as one JSON line live in a Lua script
written to the scratch directory. wrk runs pinned to the load core while the CPU time of wrk
and of the processes under test is sampled, so the table can say who was the bottleneck.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil  # type: ignore[import-untyped]

from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.localnet.process import spawn

from .services import LOAD_CPU, pinned

MARKER = "WRK_RESULT "
_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[BODY]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'MARKER{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int  #: socket errors + non-2xx answers
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: CPU time / wall time (in cores) of wrk and of each watched group of processes.
    cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def binary() -> str:
    found = shutil.which("wrk") or "/usr/bin/wrk"
    if not Path(found).exists():
        raise RuntimeError("wrk is not installed")
    return found


def version() -> str:
    out = subprocess.run([binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
    return first.split(" [")[0].removeprefix("wrk ").strip()


def script(workdir: Path) -> Path:
    path = workdir / "post.lua"
    if not path.exists():
        body = orjson.dumps(v2_body()).decode()
        path.write_text(_LUA.replace("BODY", body).replace("MARKER", MARKER))
    return path


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of ``processes`` so far (the gone ones count nothing)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run(
    url: str,
    workdir: Path,
    name: str,
    *,
    seconds: int,
    threads: int,
    connections: int,
    watch: dict[str, list[psutil.Process]],
    cpu: int | None = LOAD_CPU,
) -> WrkResult:
    """``wrk -tT -cC -dNs -s post.lua URL``; CPU use sampled between 0.3 s in and 0.3 s before
    the end."""
    argv = [
        binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script(workdir)),
        url,
    ]
    child = spawn(name, pinned(argv, cpu), lifetime_s=seconds + 30, log_dir=workdir)
    try:
        time.sleep(0.3)
        groups = {"wrk": psutil.Process(child.pid).children(recursive=True), **watch}
        started = time.monotonic()
        before = {name: cpu_seconds(procs) for name, procs in groups.items()}
        time.sleep(max(seconds - 0.6, 0.1))
        wall = time.monotonic() - started
        used = {name: (cpu_seconds(procs) - before[name]) / wall for name, procs in groups.items()}
        code = child.process.wait(timeout=seconds + 20)
    finally:
        child.stop()
    lines = [ln for ln in child.log_path.read_text().splitlines() if ln.startswith(MARKER)]
    if code != 0 or not lines:
        raise RuntimeError(f"wrk failed ({code}):\n{child.log_tail()}")
    data = json.loads(lines[-1][len(MARKER) :])
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        cpu=used,
    )
