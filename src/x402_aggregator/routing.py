"""Which upstreams may handle a payment, and in which order to try them.

Candidates are the upstreams whose ``/supported`` lists the payment's kind (those whose
capabilities are still unknown come after). They are split into *available* ones, ordered by
the configured strategy, and a *panic* tail of ejected or unhealthy ones in priority order:
when every candidate is ejected we still try them rather than refuse. Drained upstreams are
never used.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ._types import Clock, Operation
from .config import RoutingConfig
from .protocol import INVALID_NETWORK, UNSUPPORTED_SCHEME, PaymentRequest
from .upstream import Upstream

#: Most payments remembered for verify→settle affinity.
AFFINITY_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream in a routing plan; ``panic`` ones are tried although ejected/unhealthy."""

    upstream: Upstream
    panic: bool = False


class Strategy(Protocol):
    def order(self, available: Sequence[Upstream]) -> list[Upstream]:
        """Order available upstreams (given in priority order) for one request."""
        ...


class PriorityStrategy:
    """Strict priority: the best tier first, configuration order within a tier."""

    def order(self, available: Sequence[Upstream]) -> list[Upstream]:
        return list(available)


class WeightedStrategy:
    """Smooth weighted round robin (nginx's) within the best available tier."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def order(self, available: Sequence[Upstream]) -> list[Upstream]:
        tier, rest = _best_tier(available)
        if len(tier) < 2:
            return [*tier, *rest]
        total = sum(up.config.weight for up in tier)
        for up in tier:
            self._current[up.name] = self._current.get(up.name, 0) + up.config.weight
        chosen = max(tier, key=lambda up: self._current[up.name])
        self._current[chosen.name] -= total
        others = sorted((up for up in tier if up is not chosen), key=lambda up: -up.config.weight)
        return [chosen, *others, *rest]


class LatencyStrategy:
    """Power of two choices on each upstream's latency EWMA, within the best available tier."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - load balancing, not cryptography

    def order(self, available: Sequence[Upstream]) -> list[Upstream]:
        tier, rest = _best_tier(available)
        if len(tier) < 2:
            return [*tier, *rest]
        first, second = self._rng.sample(tier, 2)
        chosen = min((first, second), key=_latency)
        others = sorted((up for up in tier if up is not chosen), key=_latency)
        return [chosen, *others, *rest]


STRATEGIES: dict[str, type[PriorityStrategy | WeightedStrategy | LatencyStrategy]] = {
    "priority": PriorityStrategy,
    "weighted": WeightedStrategy,
    "latency": LatencyStrategy,
}


class Router:
    """Plans the attempts for one request."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        config: RoutingConfig | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        config = config or RoutingConfig()
        indexed = sorted(enumerate(upstreams), key=lambda pair: (pair[1].config.priority, pair[0]))
        self.upstreams: tuple[Upstream, ...] = tuple(up for _, up in indexed)
        self.strategy: Strategy = STRATEGIES[config.strategy]()
        self._affinity_ttl = config.affinity_ttl_s
        self._affinity: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._clock = clock

    def upstream(self, name: str) -> Upstream | None:
        """The upstream called ``name``, if it is configured (and enabled)."""
        return next((up for up in self.upstreams if up.name == name), None)

    def candidates(self, request: PaymentRequest) -> tuple[Upstream, ...]:
        """Upstreams that can take this payment: known to support it first, then unknown ones."""
        known: list[Upstream] = []
        unknown: list[Upstream] = []
        for upstream in self.upstreams:
            caps = upstream.capabilities
            if caps is None:
                unknown.append(upstream)
            elif caps.supports(request.kind) and (
                request.bound_signer is None or caps.owns(request.bound_signer) is not False
            ):
                known.append(upstream)
        return (*known, *unknown)

    def plan(
        self, request: PaymentRequest, operation: Operation, candidates: Sequence[Upstream]
    ) -> list[Attempt]:
        """Available candidates in strategy order, then the ejected ones (panic mode)."""
        network = request.kind.network
        usable = [up for up in candidates if not up.health.drained]
        # A half-open upstream is tried again with a verify, never with someone's money.
        trial = operation == "verify"
        available = [up for up in usable if up.health.available(network, trial=trial)]
        # The strategy balances upstreams known to support the kind; unknown ones stay last.
        known = [up for up in available if up.capabilities is not None]
        ordered = [
            *self.strategy.order(known),
            *(up for up in available if up.capabilities is None),
        ]
        if operation == "settle":
            ordered = self._affine_first(request, ordered)
        panic = [Attempt(up, panic=True) for up in usable if up not in available]
        return [*(Attempt(up) for up in ordered), *panic]

    def remember(self, request: PaymentRequest, upstream: Upstream) -> None:
        """Note that ``upstream`` verified this payment, so its settle goes there first."""
        if self._affinity_ttl <= 0:
            return
        now = self._clock()
        self._affinity[request.identity] = (upstream.name, now + self._affinity_ttl)
        self._affinity.move_to_end(request.identity)
        # Oldest first, and all share one TTL: expired entries are all at the front.
        while self._affinity and (
            len(self._affinity) > AFFINITY_ENTRIES or next(iter(self._affinity.values()))[1] < now
        ):
            self._affinity.popitem(last=False)

    def _affine_first(self, request: PaymentRequest, ordered: list[Upstream]) -> list[Upstream]:
        entry = self._affinity.get(request.identity)
        if entry is None or entry[1] < self._clock():
            return ordered
        preferred = [up for up in ordered if up.name == entry[0]]
        return [*preferred, *(up for up in ordered if up.name != entry[0])]

    def unsupported_reason(self, request: PaymentRequest) -> str:
        """Why no upstream can take ``request`` (all capabilities being known)."""
        kind = request.kind
        capabilities = [up.capabilities for up in self.upstreams if up.capabilities is not None]
        if any(caps.supports(kind) for caps in capabilities):
            # Some upstream takes the kind: none owns the signer the payment is bound to.
            return request.scheme.unowned_signer_reason
        if any(caps.supports_scheme(kind.version, kind.scheme) for caps in capabilities):
            return INVALID_NETWORK
        return UNSUPPORTED_SCHEME


def _best_tier(available: Sequence[Upstream]) -> tuple[list[Upstream], list[Upstream]]:
    if not available:
        return [], []
    best = available[0].config.priority
    tier = [up for up in available if up.config.priority == best]
    return tier, [up for up in available if up.config.priority != best]


def _latency(upstream: Upstream) -> float:
    # Unmeasured upstreams look fastest, so each gets tried and measured.
    return upstream.health.latency_ewma_ms or 0.0
