"""Settlement ledger: settles/s by ledger database, and what the write-ahead costs in latency.

One zero-latency fake facilitator (it answers every settle with success) and, in front of it,
three aggregators (``x402-aggregator serve``) that differ only in ``ledger.url``:

- ``sqlite:///:memory:``: the ledger's code without durability, the nearest thing to no ledger;
- a SQLite file in the scratch directory (WAL, ``synchronous=FULL``: an fsync per commit);
- PostgreSQL: a private server started for the run (``PostgresServer``: its default durability,
  fsync and ``synchronous_commit`` on), reached over asyncpg.

Every settle is claimed and its attempt written before it is sent upstream, and its outcome is
written before the answer. Two measurements, by a closed-loop generator in its own process
(:mod:`bench.settleload`) on the load core, each request a new payment:

- sequential: one settle at a time, direct to the fake and through each aggregator taking
  turns request by request: p50/p90/p99 per path; the write-ahead's cost is the added p50/p99
  vs the in-memory ledger and vs direct;
- concurrent: N clients in a closed loop for a fixed time, one path after the other: settles/s,
  closed-loop latency, errors (any answer but HTTP 200 with ``success: true``) and the CPU of the
  generator and of the processes under test.

The fsync latency of the scratch directory's file system is measured too, since it bounds what a
SQLite file can do.

    python -m bench.ledger [--quick]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import orjson
import psutil  # type: ignore[import-untyped]

from tests.postgres import PostgresServer, postgres_bin_dir
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.localnet.process import Child, spawn, wait_for_line

from .loadgen import START_MARKER, Target
from .overhead import MAX_GENERATOR_CPU
from .services import (
    HOST,
    LOAD_CPU,
    SUT_CPU,
    Service,
    pinning_available,
    start_aggregator,
    start_fake,
)
from .settings import Settings
from .settleload import CONCURRENT, SEQUENTIAL, SettleLoadResult, SettleSpec
from .stats import Summary
from .workspace import run_section
from .wrk import cpu_seconds as _cpu_seconds

DIRECT = "direct to upstream"
MEMORY = "SQLite :memory:"
SQLITE = "SQLite file"
POSTGRES = "PostgreSQL"
#: The paths in table order; the three aggregators differ only in their ledger.
PATHS = (DIRECT, MEMORY, SQLITE, POSTGRES)
LEDGER_ENV = "X402_AGGREGATOR_LEDGER__URL"
_NONCE_MARK = "0x" + "e" * 64


@dataclass(frozen=True, slots=True)
class SequentialRow:
    path: str
    latency: Summary
    errors: int
    #: Sorted latencies, for the plot.
    sorted_ms: list[float] = field(repr=False, default_factory=list)


@dataclass(frozen=True, slots=True)
class ConcurrentRow:
    path: str
    settles: int  #: successful settles answered within the window
    errors: int
    window_s: float
    latency: Summary  #: closed loop: understates queueing
    #: CPU time / wall time (cores) over the window: generator, aggregator, upstream, postgres.
    cpu: dict[str, float]
    exhausted: bool
    error_samples: list[str]

    @property
    def rate(self) -> float:
        return self.settles / self.window_s if self.window_s else 0.0

    @property
    def generator_saturated(self) -> bool:
        return self.cpu.get("generator", 0.0) > MAX_GENERATOR_CPU


@dataclass(frozen=True, slots=True)
class WriteAhead:
    """What a durable ledger adds to the sequential settle latency."""

    path: str
    vs_memory: Summary
    vs_direct: Summary


@dataclass(slots=True)
class LedgerResult:
    rounds: int
    warmup_rounds: int
    clients: int
    seconds: float
    warmup_s: float
    sequential: list[SequentialRow]
    sequential_generator_cpu: float
    sequential_errors: list[str]
    concurrent: list[ConcurrentRow]
    fsync: Summary  #: write 4 KiB + fsync in the scratch directory, ms
    fsync_where: str  #: file system of the scratch directory
    postgres_version: str
    postgres_where: str  #: file system of PostgreSQL's data directory
    placement: str

    def seq(self, path: str) -> SequentialRow | None:
        return next((r for r in self.sequential if r.path == path), None)

    def write_ahead(self) -> list[WriteAhead]:
        memory, direct = self.seq(MEMORY), self.seq(DIRECT)
        out = []
        for path in (MEMORY, SQLITE, POSTGRES):
            row = self.seq(path)
            if row is None or memory is None or direct is None:
                continue
            added = row.latency.minus(memory.latency), row.latency.minus(direct.latency)
            out.append(WriteAhead(path, *added))
        return out


# --- helpers -------------------------------------------------------------------------------


def settle_template() -> tuple[str, str]:
    """A v2 settle body cut at its one nonce (the EIP-3009 authorization's)."""
    body = orjson.dumps(v2_body(nonce=_NONCE_MARK)).decode()
    prefix, suffix = body.split(_NONCE_MARK)
    return prefix, suffix


def filesystem(path: Path) -> str:
    """``ext4 (/dev/vda on /)``: the mount holding ``path``."""
    resolved = str(path.resolve())
    best = None
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and (
            best is None or len(mount) > len(best.mountpoint)
        ):
            best = part
    if best is None:
        return "unknown"
    return f"{best.fstype} ({best.device} on {best.mountpoint})"


def fsync_probe(directory: Path, count: int) -> Summary:
    """Latency of ``count`` fsyncs, each after appending 4 KiB to a file in ``directory``."""
    path = directory / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 4096
        for _ in range(count):
            os.write(fd, block)
            started = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return Summary.of(samples)


def postgres_version() -> str:
    try:
        out = subprocess.run(
            [str(postgres_bin_dir() / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, RuntimeError):
        return "unknown"
    found = re.search(r"\(PostgreSQL\) (\S+)", out.stdout)
    return found.group(1) if found else "unknown"


def _postgres_processes(pg: PostgresServer) -> list[psutil.Process]:
    """The postmaster and its children (backends, WAL writer, checkpointer...)."""
    try:
        pid = int((pg.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except (OSError, ValueError, psutil.Error):
        return []


def _pin(processes: list[psutil.Process], cpu: int) -> bool:
    """Move running processes to ``cpu`` (their later children inherit it)."""
    if not pinning_available():
        return False
    try:
        for process in processes:
            process.cpu_affinity([cpu])
    except (psutil.Error, OSError):
        return False
    return True


class _Generator:
    """One :mod:`bench.settleload` process: start, wait for its start line, read its result."""

    def __init__(self, spec: SettleSpec, workdir: Path, name: str) -> None:
        self.spec = spec
        self.name = name
        self.workdir = workdir
        self.result_path = workdir / f"{name}.result.json"
        spec_path = workdir / f"{name}.spec.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        self.lifetime = spec.duration_s + spec.warmup_s + spec.timeout_s + 120
        self.child: Child = spawn(
            name,
            [sys.executable, "-m", "bench.settleload", str(spec_path), str(self.result_path)],
            lifetime_s=self.lifetime,
            cwd=Path(__file__).resolve().parent.parent,
            log_dir=workdir,
        )

    def wait_started(self) -> int:
        line = wait_for_line(self.child, START_MARKER, 60)
        return int(line.split(START_MARKER, 1)[1].strip())

    def result(self) -> SettleLoadResult:
        try:
            code = self.child.process.wait(timeout=self.lifetime)
        finally:
            self.child.stop()
        if code != 0 or not self.result_path.exists():
            raise RuntimeError(f"settle generator failed ({code}):\n{self.child.log_tail()}")
        return SettleLoadResult.load(self.result_path)


def _sequential(
    settings: Settings, workdir: Path, ports: dict[str, int], template: tuple[str, str]
) -> tuple[list[SequentialRow], SettleLoadResult]:
    spec = SettleSpec(
        mode=SEQUENTIAL,
        targets=[Target(HOST, ports[path], "/settle") for path in PATHS],
        body_prefix=template[0],
        body_suffix=template[1],
        rounds=settings.ledger_rounds,
        warmup_rounds=settings.ledger_warmup_rounds,
        cpu=LOAD_CPU,
    )
    generator = _Generator(spec, workdir, "ledger-sequential")
    try:
        generator.wait_started()
    except BaseException:
        generator.child.stop()
        raise
    result = generator.result()
    rows = []
    for number, path in enumerate(PATHS):
        samples = sorted(result.latency_ms[number])
        rows.append(SequentialRow(path, Summary.of(samples), result.errors[number], samples))
    return rows, result


def _concurrent(
    settings: Settings,
    workdir: Path,
    path: str,
    port: int,
    template: tuple[str, str],
    watch: dict[str, Callable[[], list[psutil.Process]]],
) -> ConcurrentRow:
    seconds = settings.ledger_seconds
    spec = SettleSpec(
        mode=CONCURRENT,
        targets=[Target(HOST, port, "/settle")],
        body_prefix=template[0],
        body_suffix=template[1],
        clients=settings.ledger_clients,
        duration_s=seconds,
        warmup_s=settings.ledger_warmup_s,
        cpu=LOAD_CPU,
    )
    slug = path.lower().replace(" ", "-").replace(":", "")
    generator = _Generator(spec, workdir, f"ledger-concurrent-{slug}")
    try:
        t0_ns = generator.wait_started()
        # CPU of the processes under test over the window (a little inside it). Their
        # processes are listed once warm: PostgreSQL forks a backend per new pool connection.
        time.sleep(max((t0_ns - time.monotonic_ns()) / 1e9, 0) + 0.1)
        groups = {name: find() for name, find in watch.items()}
        started = time.monotonic()
        before = {name: _cpu_seconds(procs) for name, procs in groups.items()}
        time.sleep(max(seconds - 0.2, 0.1))
        wall = time.monotonic() - started
        used = {name: (_cpu_seconds(ps) - before[name]) / wall for name, ps in groups.items()}
    except BaseException:
        generator.child.stop()
        raise
    result = generator.result()
    return ConcurrentRow(
        path=path,
        settles=result.successes(),
        errors=result.errors[0],
        window_s=result.window_s,
        latency=Summary.of(result.latency_ms[0]),
        cpu={"generator": result.cpu_utilisation, **used},
        exhausted=result.exhausted,
        error_samples=result.error_samples,
    )


# --- the section ---------------------------------------------------------------------------


def run(settings: Settings, workdir: Path) -> LedgerResult:
    lifetime = 4 * (settings.ledger_seconds + settings.ledger_warmup_s) + 300
    fsync = fsync_probe(workdir, settings.fsync_probes)
    template = settle_template()
    services: list[Service] = []
    with PostgresServer() as pg:
        pg_pinned = _pin(_postgres_processes(pg), SUT_CPU)
        ledgers = {
            MEMORY: "sqlite:///:memory:",
            SQLITE: f"sqlite:///{workdir / 'ledger.db'}",
            POSTGRES: pg.new_database("ledger_bench"),
        }
        try:
            fake = start_fake("upstream", workdir, latency_ms=0, cpu=SUT_CPU, lifetime_s=lifetime)
            services.append(fake)
            aggregators: dict[str, Service] = {}
            for path, url in ledgers.items():
                slug = {MEMORY: "memory", SQLITE: "sqlite", POSTGRES: "postgres"}[path]
                aggregators[path] = start_aggregator(
                    f"aggregator-{slug}",
                    workdir,
                    [{"name": "upstream", "url": fake.url}],
                    extra={"ledger": {"url": url, "public_rpcs": False}},
                    cpu=SUT_CPU,
                    lifetime_s=lifetime,
                    env={LEDGER_ENV: url},  # an inherited override must not change the ledger
                )
                services.append(aggregators[path])
            ports = {DIRECT: fake.port, **{p: a.port for p, a in aggregators.items()}}
            sequential, seq_result = _sequential(settings, workdir, ports, template)
            concurrent = []
            for path in PATHS:
                watch: dict[str, Callable[[], list[psutil.Process]]] = {"upstream": fake.processes}
                if path in aggregators:
                    watch["aggregator"] = aggregators[path].processes
                if path == POSTGRES:
                    watch["postgres"] = partial(_postgres_processes, pg)
                port = ports[path]
                concurrent.append(_concurrent(settings, workdir, path, port, template, watch))
        finally:
            for service in reversed(services):
                service.stop()
        postgres_where = filesystem(pg.data_dir)
    if not pinning_available():
        placement = "unpinned (fewer than two cores or no taskset)"
    else:
        placement = (
            f"generator on core {LOAD_CPU}; the fake, the aggregators and PostgreSQL on core "
            f"{SUT_CPU}"
            if pg_pinned
            else f"generator on core {LOAD_CPU}; the fake and the aggregators on core {SUT_CPU}, "
            "PostgreSQL unpinned (could not set its affinity)"
        )
    return LedgerResult(
        rounds=settings.ledger_rounds,
        warmup_rounds=settings.ledger_warmup_rounds,
        clients=settings.ledger_clients,
        seconds=settings.ledger_seconds,
        warmup_s=settings.ledger_warmup_s,
        sequential=sequential,
        sequential_generator_cpu=seq_result.cpu_utilisation,
        sequential_errors=seq_result.error_samples,
        concurrent=concurrent,
        fsync=fsync,
        fsync_where=filesystem(workdir),
        postgres_version=postgres_version(),
        postgres_where=postgres_where,
        placement=placement,
    )


def main() -> None:
    from .report import ledger_section

    result = run_section(__doc__, run)
    print(ledger_section(result))
    if any(not r.settles for r in result.concurrent) or any(
        not r.latency.count for r in result.sequential
    ):
        raise SystemExit(1)  # a path that never settled measured nothing


if __name__ == "__main__":
    main()
