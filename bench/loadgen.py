"""Open-loop load generator, run as its own process pinned to its own core.

Request ``i`` is due at ``t0 + i / rate`` whatever happened to the earlier ones, and its latency
is measured from that *scheduled* time, so a stalled server cannot hide its stall by slowing the
sender (coordinated omission). The schedule is driven by a Linux ``timerfd`` (nanosecond
deadlines, not the event loop's millisecond timers) and requests go out on a minimal keep-alive
client (:mod:`bench.rawhttp`), so the generator's own costs stay small; it reports them anyway:
CPU time / wall time, achieved vs target rate, and how late sends were.

With several targets, time is cut into ``block_s`` blocks that take turns (direct, through,
direct, ...), so slow drift of a noisy machine hits every target alike.

    python -m bench.loadgen SPEC.json RESULT.json

The orchestrator side (writing SPEC, starting this process, reading RESULT) is
:mod:`bench.loadrun`; this module imports nothing of the service, so it starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from .rawhttp import Answer, Pool

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
START_MARKER = "loadgen start "
#: Real-time priority of the generator (needs privileges; else a lower nice value, else none).
RT_PRIORITY = 1
NICE = -10


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str = "/verify"


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to send; written as JSON for the generator process.

    Each request's body is ``body_prefix`` + a new 32-byte nonce in hex + ``body_suffix``.
    """

    targets: Sequence[Target]
    body_prefix: str
    body_suffix: str
    rate: float
    duration_s: float
    block_s: float = 1.0
    cpu: int | None = None
    warmup_requests: int = 200
    prewarm_connections: int = 8
    max_connections: int = 1024
    timeout_s: float = 10.0
    #: Seconds between the generator saying "start" and the first scheduled request.
    lead_s: float = 0.3

    @property
    def total(self) -> int:
        return round(self.rate * self.duration_s)


@dataclass(slots=True)
class LoadResult:
    """Per request (same index everywhere) plus the generator's own figures."""

    rate: float
    period_ns: int
    t0_ns: int
    target: list[int]
    lag_us: list[float]  #: when the generator dispatched it - scheduled send
    latency_ms: list[float]  #: answer - *scheduled* send (coordinated-omission free)
    status: list[int]  #: HTTP status, 0 for no answer
    valid: list[bool]
    upstream: list[str]
    attempts: list[int]
    error: list[str]
    cpu_s: float
    wall_s: float
    sent: int
    send_span_s: float
    extra: dict[str, float] = field(default_factory=dict)
    #: How the generator was scheduled: SCHED_FIFO, nice -10 or normal.
    scheduling: str = ""

    @property
    def cpu_utilisation(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def achieved_rate(self) -> float:
        return (self.sent - 1) / self.send_span_s if self.send_span_s > 0 else 0.0

    def scheduled_s(self, index: int) -> float:
        return index * self.period_ns / 1e9

    def ok(self, index: int) -> bool:
        return self.status[index] == 200 and self.valid[index]

    def indices(
        self, target: int | None = None, start_s: float = 0.0, end_s: float = float("inf")
    ) -> list[int]:
        """Requests of ``target`` (all if None) scheduled in [start_s, end_s)."""
        return [
            i
            for i in range(len(self.status))
            if (target is None or self.target[i] == target)
            and start_s <= self.scheduled_s(i) < end_s
        ]

    @classmethod
    def load(cls, path: Path) -> LoadResult:
        data = orjson.loads(path.read_bytes())
        return cls(**data)


class _TimerFd:
    """A periodic CLOCK_MONOTONIC timer on an fd the event loop can watch (Linux)."""

    class _Itimerspec(ctypes.Structure):
        _fields_ = (("it_interval", ctypes.c_long * 2), ("it_value", ctypes.c_long * 2))

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd: int = self._libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

    def arm(self, first_ns: int, interval_ns: int) -> None:
        spec = self._Itimerspec()
        spec.it_interval[:] = divmod(interval_ns, 1_000_000_000)
        spec.it_value[:] = divmod(first_ns, 1_000_000_000)
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def expirations(self) -> int:
        try:
            return int.from_bytes(os.read(self.fd, 8), sys.byteorder)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.fd)


def _request_parts(target: Target, spec: LoadSpec) -> tuple[bytes, bytes]:
    """Request bytes: head + body prefix, then the nonce, then the body's rest."""
    length = len(spec.body_prefix.encode()) + 66 + len(spec.body_suffix.encode())
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    return head + spec.body_prefix.encode(), spec.body_suffix.encode()


class _Generator:
    def __init__(self, spec: LoadSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        total = spec.total
        self.total = total
        self.period_ns = round(1e9 / spec.rate)
        self.block_ns = round(spec.block_s * 1e9) if len(spec.targets) > 1 else 0
        self.t0_ns = 0
        self.next = 0
        self.finished = 0
        self.target = [self._target_of(i) for i in range(total)]
        self.lag_us = [0.0] * total
        self.latency_ms = [0.0] * total
        self.status = [0] * total
        self.valid = [False] * total
        self.upstream = [""] * total
        self.attempts = [0] * total
        self.error = [""] * total
        self.dispatched_ns = [0] * total
        self.first_sent_ns = 0
        self.last_sent_ns = 0
        self.all_done = asyncio.Event()
        self.warm = True
        self.warm_left = 0
        self.warm_done = asyncio.Event()
        run_id = secrets.token_hex(8)
        self.pools: list[Pool] = []
        for number, target in enumerate(spec.targets):
            head, tail = _request_parts(target, spec)
            self.pools.append(self._pool(target, head, tail, f"{run_id}{number:02x}"))

    def _target_of(self, index: int) -> int:
        if not self.block_ns:
            return 0
        return (index * self.period_ns // self.block_ns) % len(self.spec.targets)

    def _pool(self, target: Target, head: bytes, tail: bytes, prefix: str) -> Pool:
        def payload(index: int) -> bytes:
            # 64 hex digits: 18 of run and target, 46 of request index.
            return head + f"0x{prefix}{index:046x}".encode() + tail

        return Pool(
            self.loop,
            target.host,
            target.port,
            payload=payload,
            done=self._done,
            clock=time.monotonic_ns,
            max_connections=self.spec.max_connections,
        )

    def _done(self, index: int, sent_ns: int, answer: Answer | None, error: str) -> None:
        now = time.monotonic_ns()
        if self.warm:
            self.warm_left -= 1
            if self.warm_left <= 0:
                self.warm_done.set()
            return
        scheduled = self.t0_ns + index * self.period_ns
        self.lag_us[index] = (self.dispatched_ns[index] - scheduled) / 1e3
        self.latency_ms[index] = (now - scheduled) / 1e6
        if answer is not None:
            self.status[index] = answer.status
            self.valid[index] = answer.valid
            self.upstream[index] = answer.header(b"x-aggregator-upstream")
            attempts = answer.header(b"x-aggregator-attempts")
            self.attempts[index] = int(attempts) if attempts.isdigit() else 0
        self.error[index] = error
        self.finished += 1
        if self.finished >= self.total:
            self.all_done.set()

    async def warm_up(self) -> None:
        """Open connections and send a few sequential-ish requests to each target (not kept)."""
        for pool in self.pools:
            await pool.prewarm(self.spec.prewarm_connections)
        for pool in self.pools:
            for batch in range(0, self.spec.warmup_requests, 4):
                self.warm_left = 4
                self.warm_done.clear()
                for k in range(4):
                    pool.submit(self.total + batch + k)  # indices past the schedule
                await asyncio.wait_for(self.warm_done.wait(), self.spec.timeout_s)
        self.warm = False

    def _tick(self, timer: _TimerFd) -> None:
        due = timer.expirations()
        now = time.monotonic_ns()
        for _ in range(due):
            if self.next >= self.total:
                break
            index = self.next
            self.next += 1
            if index == 0:
                self.first_sent_ns = now
            self.last_sent_ns = now
            self.dispatched_ns[index] = now
            self.pools[self.target[index]].submit(index)
        if self.next >= self.total:
            self.loop.remove_reader(timer.fd)

    async def run(self) -> LoadResult:
        await self.warm_up()
        # A full collection can take milliseconds; the schedule allocates little, so go without.
        gc.collect()
        gc.freeze()
        gc.disable()
        timer = _TimerFd()
        self.t0_ns = time.monotonic_ns() + round(self.spec.lead_s * 1e9)
        print(f"{START_MARKER}{self.t0_ns}", flush=True)
        cpu_start = time.process_time()
        wall_start = time.monotonic_ns()
        timer.arm(self.t0_ns, self.period_ns)
        self.loop.add_reader(timer.fd, self._tick, timer)
        timeout_ns = round(self.spec.timeout_s * 1e9)
        end_by = self.t0_ns + self.total * self.period_ns + timeout_ns + 2 * 10**9
        try:
            while not self.all_done.is_set() and time.monotonic_ns() < end_by:
                for pool in self.pools:
                    pool.expire(time.monotonic_ns(), timeout_ns)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.all_done.wait(), 0.1)
        finally:
            with_reader = self.next < self.total
            if with_reader:
                self.loop.remove_reader(timer.fd)
            timer.close()
            for pool in self.pools:
                pool.close()
        wall_s = (time.monotonic_ns() - wall_start) / 1e9
        for index in range(self.total):  # never sent or never answered within end_by
            if self.status[index] == 0 and not self.error[index]:
                self.error[index] = "not answered"
        return LoadResult(
            rate=self.spec.rate,
            period_ns=self.period_ns,
            t0_ns=self.t0_ns,
            target=self.target,
            lag_us=self.lag_us,
            latency_ms=self.latency_ms,
            status=self.status,
            valid=self.valid,
            upstream=self.upstream,
            attempts=self.attempts,
            error=self.error,
            cpu_s=time.process_time() - cpu_start,
            wall_s=wall_s,
            sent=self.next,
            send_span_s=(self.last_sent_ns - self.first_sent_ns) / 1e9,
            extra={
                "connect_errors": float(sum(p.connect_errors for p in self.pools)),
                "connections_opened": float(sum(p.opened for p in self.pools)),
            },
        )


def _spec_from_json(raw: bytes) -> LoadSpec:
    data = json.loads(raw)
    data["targets"] = [Target(**t) for t in data["targets"]]
    return LoadSpec(**data)


def _prioritise() -> str:
    """Be woken on time by the timer even when other work lands on our core.

    On a shared machine another process's time slice (milliseconds) would otherwise delay the
    wake-up. SCHED_FIFO at the lowest real-time priority does it; the generator uses a few per
    cent of its core and the kernel's real-time throttling bounds it in any case.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
        return "SCHED_FIFO"
    except (PermissionError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
        return f"nice {NICE}"
    except (PermissionError, OSError):
        return "normal"


def generator_loop(cpu: int | None) -> asyncio.AbstractEventLoop:
    """A fresh event loop (uvloop) for a load generator process pinned to ``cpu``."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency of the service
        pass
    return asyncio.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m bench.loadgen SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = _spec_from_json(Path(args[0]).read_bytes())
    loop = generator_loop(spec.cpu)
    scheduling = _prioritise()
    try:
        result = loop.run_until_complete(_Generator(spec, loop).run())
    finally:
        loop.close()
    result.scheduling = scheduling
    Path(args[1]).write_bytes(orjson.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
