"""Active health checks: every upstream's ``/supported`` fetched in the background.

A probe refreshes what the upstream supports (its kinds, signers and extensions) and counts
into its health (see :mod:`.health`); a failing upstream is probed again sooner, so that its
recovery is noticed quickly.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from .config import HealthConfig
from .errors import TransportError
from .transport import Transport
from .upstream import Upstream

logger = logging.getLogger("x402_aggregator.health")


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

    async def probe(self, upstream: Upstream, transport: Transport | None = None) -> bool:
        """Probe once, update capabilities and health; True when it answered."""
        try:
            capabilities = await upstream.probe(self._config.timeout_s, transport)
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
