"""Closed-loop settle generator, run as its own process pinned to its own core.

Two shapes, one per spec:

- ``sequential``: one settle at a time, the targets taking turns request by request (A, B, C,
  D, A, B, ...), so slow drift of a noisy machine hits every target alike;
- ``concurrent``: ``clients`` keep-alive connections to one target, each sending the next settle
  as soon as the previous answer arrives; ``warmup_s`` of that, then ``duration_s`` measured.

Every request is a new payment: its body is ``body_prefix`` + a fresh random 32-byte nonce in hex
+ ``body_suffix`` (a ``v2_body`` template). All request bytes are built before the clock starts,
so the sender does no JSON, randomness or formatting while measuring. Latency runs from the
write of a request to the end of its answer; an answer counts as a success only if it is HTTP
200 with ``success: true``. The generator reports its own CPU time / wall time, so the report
can say whether it, rather than the server, was the limit.

    python -m bench.settleload SPEC.json RESULT.json

Like :mod:`bench.loadgen`, this module imports nothing of the service, so it starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from .loadgen import START_MARKER, Target, generator_loop
from .rawhttp import Answer, Pool

SEQUENTIAL = "sequential"
CONCURRENT = "concurrent"
#: Distinct error texts kept in the result.
ERROR_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class SettleSpec:
    """What to send; written as JSON for the generator process."""

    mode: str  #: SEQUENTIAL or CONCURRENT
    targets: Sequence[Target]
    body_prefix: str
    body_suffix: str
    #: sequential: measured settles per target, after ``warmup_rounds`` unmeasured ones.
    rounds: int = 0
    warmup_rounds: int = 0
    #: concurrent (one target): connections, each with one settle in flight at a time.
    clients: int = 1
    duration_s: float = 0.0
    warmup_s: float = 0.0
    #: concurrent: payments are pre-built for this many settles/s over warm-up + duration; a
    #: run that uses them all ends early and says so.
    max_rate: float = 15_000.0
    cpu: int | None = None
    timeout_s: float = 10.0

    @property
    def total(self) -> int:
        if self.mode == SEQUENTIAL:
            return (self.warmup_rounds + self.rounds) * len(self.targets)
        return math.ceil((self.warmup_s + self.duration_s) * self.max_rate)


@dataclass(slots=True)
class SettleLoadResult:
    """Per target: latencies of the measured successes, and the measured failures."""

    mode: str
    latency_ms: list[list[float]]
    errors: list[int]
    error_samples: list[str]
    #: Seconds measured: concurrent, the window; sequential, first measured send to last answer.
    window_s: float
    cpu_s: float
    bodies: int
    #: The pre-built payments ran out before the end of the window (it was cut short).
    exhausted: bool
    connections_opened: int

    @property
    def cpu_utilisation(self) -> float:
        return self.cpu_s / self.window_s if self.window_s else 0.0

    def successes(self, target: int = 0) -> int:
        return len(self.latency_ms[target])

    def rate(self, target: int = 0) -> float:
        """Successful settles per second over the window."""
        return self.successes(target) / self.window_s if self.window_s else 0.0

    @classmethod
    def load(cls, path: Path) -> SettleLoadResult:
        return cls(**orjson.loads(path.read_bytes()))


def _requests(spec: SettleSpec) -> list[bytes]:
    """Every request's bytes, target by target in turn (sequential) or all to target 0."""
    prefix, suffix = spec.body_prefix.encode(), spec.body_suffix.encode()
    length = len(prefix) + 66 + len(suffix)
    heads = [
        (
            f"POST {t.path} HTTP/1.1\r\nHost: {t.host}:{t.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        + prefix
        for t in spec.targets
    ]
    count = len(heads)
    return [
        heads[i % count] + b"0x" + secrets.token_hex(32).encode() + suffix
        for i in range(spec.total)
    ]


class _Runner:
    def __init__(self, spec: SettleSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.requests = _requests(spec)
        self.count = len(spec.targets)
        self.next = 0
        self.in_flight = 0
        self.measuring = False
        self.stopping = False
        self.exhausted = False
        self.latency_ms: list[list[float]] = [[] for _ in spec.targets]
        self.errors = [0] * self.count
        self.samples: list[str] = []
        self.finished = asyncio.Event()
        self.first_measured = len(self.requests)
        if spec.mode == SEQUENTIAL:
            self.first_measured = spec.warmup_rounds * self.count
        per_pool = spec.clients if spec.mode == CONCURRENT else 1
        self.pools = [
            Pool(
                loop,
                t.host,
                t.port,
                payload=self.requests.__getitem__,
                done=self._done,
                clock=time.monotonic_ns,
                max_connections=per_pool,
            )
            for t in spec.targets
        ]
        self.started_ns = 0
        self.ended_ns = 0
        self.cpu_started = 0.0
        self.cpu_ended = 0.0

    # -- bookkeeping ------------------------------------------------------------------------

    def _start_window(self) -> None:
        self.measuring = True
        self.started_ns = time.monotonic_ns()
        self.cpu_started = time.process_time()

    def _end_window(self) -> None:
        if not self.measuring:
            return
        self.measuring = False
        self.ended_ns = time.monotonic_ns()
        self.cpu_ended = time.process_time()

    def _record(self, target: int, ok: bool, latency_ms: float, why: str) -> None:
        if ok:
            self.latency_ms[target].append(latency_ms)
            return
        self.errors[target] += 1
        if len(self.samples) < ERROR_SAMPLES and why not in self.samples:
            self.samples.append(why)

    def _submit(self, index: int) -> None:
        self.in_flight += 1
        self.pools[index % self.count].submit(index)

    def _done(self, index: int, sent_ns: int, answer: Answer | None, error: str) -> None:
        now = time.monotonic_ns()
        self.in_flight -= 1
        ok = answer is not None and answer.status == 200 and answer.valid
        why = error or (
            f"HTTP {answer.status}" + ("" if answer.valid else ", not success: true")
            if answer is not None
            else "no answer"
        )
        if self.spec.mode == SEQUENTIAL:
            if index == self.first_measured - 1:  # the last warm-up settle
                self._start_window()
            if index >= self.first_measured:
                self._record(index % self.count, ok, (now - sent_ns) / 1e6, why)
            if index + 1 < len(self.requests):
                # After the Pool has put this connection back (it does so after this callback).
                self.loop.call_soon(self._submit, index + 1)
            else:
                self._end_window()
                self.finished.set()
            return
        if self.measuring:
            self._record(0, ok, (now - sent_ns) / 1e6, why)
        if not self.stopping:
            if self.next < len(self.requests):
                self.loop.call_soon(self._submit, self.next)
                self.next += 1
                return
            if not self.exhausted:
                self.exhausted = True
                self._end_window()
        if self.in_flight == 0:
            self.finished.set()

    # -- the two shapes ---------------------------------------------------------------------

    async def run(self) -> SettleLoadResult:
        connections = self.spec.clients if self.spec.mode == CONCURRENT else 1
        for pool in self.pools:
            await pool.prewarm(connections)
        opened_before = sum(p.opened for p in self.pools)
        gc.collect()
        gc.freeze()
        gc.disable()
        timeout_ns = round(self.spec.timeout_s * 1e9)
        if self.spec.mode == SEQUENTIAL:
            print(f"{START_MARKER}{time.monotonic_ns()}", flush=True)
            if self.first_measured == 0:
                self._start_window()
            self._submit(0)
            end_by = time.monotonic_ns() + len(self.requests) * timeout_ns
        else:
            t0 = time.monotonic_ns() + round(self.spec.warmup_s * 1e9)
            print(f"{START_MARKER}{t0}", flush=True)
            self.loop.call_later(self.spec.warmup_s, self._start_window)
            self.loop.call_later(self.spec.warmup_s + self.spec.duration_s, self._stop)
            for _ in range(min(self.spec.clients, len(self.requests))):
                self._submit(self.next)
                self.next += 1
            end_by = t0 + round(self.spec.duration_s * 1e9) + timeout_ns + 2 * 10**9
        try:
            while not self.finished.is_set() and time.monotonic_ns() < end_by:
                for pool in self.pools:
                    pool.expire(time.monotonic_ns(), timeout_ns)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.finished.wait(), 0.1)
        finally:
            self._end_window()
            for pool in self.pools:
                pool.close()
        gc.enable()
        return SettleLoadResult(
            mode=self.spec.mode,
            latency_ms=self.latency_ms,
            errors=self.errors,
            error_samples=self.samples,
            window_s=(self.ended_ns - self.started_ns) / 1e9,
            cpu_s=self.cpu_ended - self.cpu_started,
            bodies=len(self.requests),
            exhausted=self.exhausted,
            connections_opened=sum(p.opened for p in self.pools) - opened_before,
        )

    def _stop(self) -> None:
        self._end_window()
        self.stopping = True
        if self.in_flight == 0:
            self.finished.set()


def _spec_from_json(raw: bytes) -> SettleSpec:
    data = json.loads(raw)
    data["targets"] = [Target(**t) for t in data["targets"]]
    return SettleSpec(**data)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m bench.settleload SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = _spec_from_json(Path(args[0]).read_bytes())
    loop = generator_loop(spec.cpu)
    try:
        result = loop.run_until_complete(_Runner(spec, loop).run())
    finally:
        loop.close()
    Path(args[1]).write_bytes(orjson.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
