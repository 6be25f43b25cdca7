"""What we know about each upstream's health, and the probe that keeps its capabilities fresh.

This is the first cut: state from probes and consecutive live failures. Outlier ejection,
circuit breakers and per-network health build on :class:`UpstreamHealth`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .config import HealthConfig
from .errors import TransportError

if TYPE_CHECKING:
    from .upstream import Outcome, Upstream

logger = logging.getLogger("x402_aggregator.health")

State = Literal["unknown", "up", "down"]
#: Consecutive calls without a usable answer after which an upstream is reported down.
DOWN_AFTER_FAILURES = 3


@dataclass(slots=True)
class UpstreamHealth:
    """Counters and state of one upstream; mutated only on the event loop."""

    name: str
    state: State = "unknown"
    reason: str = "not probed yet"
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_probe_at: float | None = None
    last_latency_ms: float | None = None
    probe_failures: int = field(default=0, repr=False)

    def record(self, outcome: Outcome) -> None:
        """Count a live verify/settle outcome."""
        self.requests += 1
        self.last_latency_ms = outcome.elapsed_s * 1000
        if outcome.kind in ("ok", "rejected"):
            self.consecutive_failures = 0
            if self.state != "up":
                self._set("up", "answering requests")
            return
        self.failures += 1
        self.consecutive_failures += 1
        self._error(outcome.error or outcome.kind)
        if self.consecutive_failures >= DOWN_AFTER_FAILURES and self.state != "down":
            self._set("down", f"{self.consecutive_failures} consecutive failed calls")

    def record_probe(self, error: str | None) -> None:
        """Count a ``/supported`` probe; ``error`` is None when it succeeded."""
        self.last_probe_at = time.time()
        if error is None:
            self.probe_failures = self.consecutive_failures = 0
            self._set("up", "probe succeeded")
            return
        self.probe_failures += 1
        self._error(error)
        self._set("down", f"probe failed: {error}")

    def _error(self, error: str) -> None:
        self.last_error, self.last_error_at = error, time.time()

    def _set(self, state: State, reason: str) -> None:
        if state != self.state:
            logger.log(
                logging.INFO if state == "up" else logging.WARNING,
                "upstream %s: %s -> %s: %s",
                self.name,
                self.state,
                state,
                reason,
            )
        self.state, self.reason = state, reason


class Prober:
    """Fetches every upstream's ``/supported`` in the background, one task per upstream."""

    def __init__(
        self, upstreams: Sequence[Upstream], config: HealthConfig, on_change: Callable[[], None]
    ) -> None:
        self._upstreams = upstreams
        self._config = config
        self._on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start probing; return after the first round or ``startup_wait_s``, whichever is first."""
        firsts = [asyncio.Event() for _ in self._upstreams]
        self._tasks = [
            asyncio.create_task(self._run(up, first), name=f"probe {up.name}")
            for up, first in zip(self._upstreams, firsts, strict=True)
        ]
        waits = [asyncio.create_task(first.wait()) for first in firsts]
        _, pending = await asyncio.wait(waits, timeout=self._config.startup_wait_s)
        for wait in pending:
            wait.cancel()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def probe(self, upstream: Upstream) -> bool:
        """Probe once, update capabilities and health; True when it answered."""
        try:
            capabilities = await upstream.probe(self._config.timeout_s)
        except (TransportError, ValueError) as exc:
            upstream.health.record_probe(str(exc))
            self._on_change()
            return False
        changed = capabilities != upstream.capabilities
        upstream.capabilities = capabilities
        upstream.health.record_probe(None)
        if changed:
            logger.info("upstream %s supports %d kinds", upstream.name, len(capabilities.kinds))
        self._on_change()
        return True

    async def _run(self, upstream: Upstream, first: asyncio.Event) -> None:
        while True:
            ok = await self.probe(upstream)
            first.set()
            await asyncio.sleep(self._delay(ok, upstream.health.probe_failures))

    def _delay(self, ok: bool, failures: int) -> float:
        interval = self._config.interval_s
        if not ok:
            # Come back sooner while an upstream is down so recovery is noticed quickly.
            interval = min(self._config.unknown_retry_s * 2 ** min(failures - 1, 10), interval)
        return interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not cryptography
