"""The processes a benchmark talks to: fake facilitators, the aggregator, nginx.

Every one is started with ``spawn`` (bounded lifetime, own process group, dies with us), listens
on 127.0.0.1 only, and can be pinned to one core with ``taskset`` so that the load generator
keeps the other one to itself.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import yaml

from x402_aggregator.localnet.live import free_port
from x402_aggregator.localnet.process import Child, ProcessError, spawn, wait_for_line, wait_until

HOST = "127.0.0.1"
#: The load generator's core and the system under test's core (when there are two).
LOAD_CPU = 0
SUT_CPU = 1


def cores() -> int:
    return len(os.sched_getaffinity(0))


def pinning_available() -> bool:
    return cores() >= 2 and shutil.which("taskset") is not None


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """``argv`` run on core ``cpu`` (inherited by all its threads and children)."""
    taskset = shutil.which("taskset")
    if cpu is None or taskset is None or not pinning_available():
        return list(argv)
    return [taskset, "-c", str(cpu), *argv]


@dataclass
class Service:
    """A started process and where it listens."""

    name: str
    port: int
    child: Child

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def processes(self) -> list[psutil.Process]:
        """The real process (below ``timeout``/``taskset``) and its children (workers)."""
        try:
            top = psutil.Process(self.child.pid)
            below = top.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return below or [top]

    def main_process(self) -> psutil.Process:
        procs = self.processes()
        if not procs:
            raise ProcessError(f"{self.name} has no process")
        return procs[0]

    def stop(self) -> None:
        self.child.stop()


def start_fake(
    name: str,
    workdir: Path,
    *,
    latency_ms: float = 1.0,
    port: int = 0,
    cpu: int | None = SUT_CPU,
    lifetime_s: float = 600,
) -> Service:
    """``x402_aggregator.localnet.fake_facilitator``; returns once it prints ``ready``."""
    return start_fakes(
        [name], workdir, latency_ms=latency_ms, port=port, cpu=cpu, lifetime_s=lifetime_s
    )[0]


def start_fakes(
    names: list[str],
    workdir: Path,
    *,
    latency_ms: float = 1.0,
    port: int = 0,
    cpu: int | None = SUT_CPU,
    lifetime_s: float = 600,
) -> list[Service]:
    """Several fakes started side by side (their start-ups overlap); ``port`` is the first's."""
    children = []
    try:
        for number, name in enumerate(names):
            children.append(
                _spawn_fake(name, workdir, latency_ms, port if number == 0 else 0, cpu, lifetime_s)
            )
        services = []
        for name, child in zip(names, children, strict=True):
            line = wait_for_line(child, "ready http://", 30)
            services.append(Service(name, int(line.rsplit(":", 1)[1]), child))
    except BaseException:
        for child in children:
            child.stop()
        raise
    return services


def _spawn_fake(
    name: str, workdir: Path, latency_ms: float, port: int, cpu: int | None, lifetime_s: float
) -> Child:
    argv = [
        sys.executable,
        "-m",
        "x402_aggregator.localnet.fake_facilitator",
        "--name",
        name,
        "--port",
        str(port),
        "--latency-ms",
        f"{latency_ms:g}",
        "--lifetime-s",
        f"{lifetime_s:g}",
    ]
    return spawn(name, pinned(argv, cpu), lifetime_s=lifetime_s + 10, log_dir=workdir)


def aggregator_command() -> list[str]:
    script = Path(sys.executable).with_name("x402-aggregator")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "x402_aggregator"]


def start_aggregator(
    name: str,
    workdir: Path,
    upstreams: list[dict[str, Any]],
    *,
    extra: dict[str, Any] | None = None,
    workers: int = 1,
    cpu: int | None = SUT_CPU,
    lifetime_s: float = 600,
    env: dict[str, str] | None = None,
    server: dict[str, Any] | None = None,
) -> Service:
    """``x402-aggregator serve --config FILE`` (log level warning); waits for ``/healthz``.

    ``server`` adds settings to the ``server:`` section (``upstream_client``, ...).

    Unless ``extra`` says otherwise, the settlement ledger is a SQLite file in ``workdir`` (the
    default would be one in the current directory, shared by every run).
    """
    port = free_port()
    config = {
        "server": {"host": HOST, "port": port, "log_level": "warning", **(server or {})},
        "upstreams": upstreams,
        "ledger": {"url": f"sqlite:///{workdir.resolve() / f'{name}-ledger.db'}"},
        **(extra or {}),
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [*aggregator_command(), "serve", "--config", str(path)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    child = spawn(name, pinned(argv, cpu), lifetime_s=lifetime_s, log_dir=workdir, env=env)
    service = Service(name, port, child)
    wait_until(child, lambda: http_status(port, "GET", "/healthz") == 200, 60)
    if workers > 1:  # every worker has run its start-up probes before it accepts
        wait_until(child, lambda: len(service.processes()) >= workers + 1, 30)
        time.sleep(1.0)
    return service


def http_status(
    port: int, method: str, path: str, body: bytes | None = None, timeout_s: float = 2.0
) -> int:
    """One request to 127.0.0.1:port; the status, or 0 if nothing answered."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def set_behaviour(fake: Service, op: str, mode: str) -> None:
    """Switch a fake facilitator's behaviour over its control API."""
    body = f'{{"op": "{op}", "mode": "{mode}"}}'.encode()
    status = http_status(fake.port, "POST", "/_fake/behaviour", body)
    if status != 200:
        raise RuntimeError(f"could not set {fake.name} {op} to {mode}: HTTP {status}")


def wait_port(port: int, child: Child, timeout_s: float = 20) -> None:
    def accepting() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((HOST, port)) == 0

    wait_until(child, accepting, timeout_s)
