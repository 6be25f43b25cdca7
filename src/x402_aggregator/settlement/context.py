"""What every part of a settle works with, handed over by the engine (never the engine itself)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from .._types import Clock
from ..alerts import Alerts
from ..chains import ChainReader
from ..ledger import Ledger
from ..networks import caip2
from ..protocol import PaymentRequest
from ..routing import Attempt, Router

#: Longest pause between two looks at an unresolved settle.
MAX_BACKOFF_S = 1800.0


@dataclass(slots=True)
class SettleContext:
    """The settler's collaborators and its one piece of shared state (``unresolved``)."""

    ledger: Ledger
    #: Chain readers by CAIP-2 network.
    chains: Mapping[str, ChainReader]
    router: Router
    alerts: Alerts
    #: The engine's request counters (``failovers``, ``ambiguous_settlements``).
    totals: dict[str, int]
    settle_deadline_s: float
    resolve_interval_s: float
    #: Monotonic: deadlines. The ledger's times (next checks, expiry) are wall-clock ones.
    clock: Clock = time.monotonic
    wall_clock: Clock = time.time
    #: Settles whose outcome is not known yet (ambiguous or pending on chain), for metrics.
    unresolved: int = 0

    def reader(self, request: PaymentRequest) -> ChainReader | None:
        """The chain reader of the payment's network, if one is configured."""
        return self.chains.get(caip2(request.kind.network))

    def plan(self, request: PaymentRequest) -> list[Attempt]:
        """A fresh settle plan: the candidates that support the payment, in routing order."""
        candidates = self.router.candidates(request)
        return list(self.router.plan(request, "settle", candidates))

    def next_check_at(self, checks: int) -> float:
        """Unresolved records are looked at again with exponential back-off."""
        delay: float = min(self.resolve_interval_s * 2.0**checks, MAX_BACKOFF_S)
        return self.wall_clock() + delay

    async def count_unresolved(self) -> None:
        self.unresolved = await self.ledger.count()
