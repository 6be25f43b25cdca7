"""What we know about each upstream: probe results, passive breakers, operator drains.

Pure state, fed by the active probes (:mod:`.probing`) and by live outcomes.

An upstream is *available* for a payment on a network when the operator has not drained it,
its ``/supported`` probes have not marked it unhealthy (N failures in a row; M successes bring
it back, HAProxy's 3/2 by default), and neither its own breaker nor its breaker for that network
is open (see :mod:`.outlier`). Health per network matters because a facilitator's ``/supported``
over-claims: one whose RPC for a chain is broken must not lose the chains it serves well.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ._types import Clock, JSONObject
from .outcome import Outcome
from .outlier import Breaker, OutlierPolicy

ProbeState = Literal["unknown", "healthy", "unhealthy"]
#: New verify latencies after which the adaptive hedge delay's p95 is computed again.
P95_REFRESH = 16
#: Verify latencies kept per upstream for the latency strategy and adaptive hedging.
LATENCY_SAMPLES = 100
EWMA_ALPHA = 0.3


@dataclass(slots=True)
class UpstreamHealth:
    """Health of one upstream; mutated only on the event loop."""

    name: str
    policy: OutlierPolicy = field(default_factory=OutlierPolicy)
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    clock: Clock = time.monotonic
    probe_state: ProbeState = "unknown"
    probe_successes: int = 0
    probe_failures: int = 0
    last_probe_error: str | None = None
    drained: bool = False
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_probe_at: float | None = None
    latency_ewma_ms: float | None = None
    breaker: Breaker = field(init=False)
    networks: dict[str, Breaker] = field(default_factory=dict)
    _verify_latencies: deque[float] = field(
        default_factory=lambda: deque(maxlen=LATENCY_SAMPLES), repr=False
    )
    #: The last p95 of ``_verify_latencies``, and how many samples arrived since: a quantile
    #: per request was 8 % of a verify's CPU, and the hedge delay needs no such precision.
    _p95_ms: float | None = field(default=None, repr=False)
    _since_p95: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.breaker = Breaker(self.policy, self.clock)

    def network(self, network: str) -> Breaker:
        breaker = self.networks.get(network)
        if breaker is None:
            breaker = self.networks[network] = Breaker(self.policy, self.clock)
        return breaker

    def available(self, network: str, *, trial: bool = True) -> bool:
        """May this upstream take a payment on ``network`` now (without claiming a trial)?

        ``trial=False``: only if no half-open trial would be needed (settles are no trials).
        """
        breakers = (self.breaker, self.network(network))
        if self.drained or self.probe_state == "unhealthy":
            return False
        if not trial:
            return all(b.current_state() == "closed" for b in breakers)
        return all(b.allows() for b in breakers)

    def claim(self, network: str) -> bool:
        """Take the right to send one request; only one caller gets a half-open trial."""
        if not self.available(network):
            return False
        if not self.breaker.claim():
            return False
        if not self.network(network).claim():
            self.breaker.release()
            return False
        return True

    def release(self, network: str) -> None:
        """Return a claim whose request ended without an outcome (a cancelled hedge)."""
        self.breaker.release()
        self.network(network).release()

    def record(self, outcome: Outcome, network: str) -> None:
        """Count a live outcome into both breakers, the counters and the latency stats."""
        self.requests += 1
        answered = outcome.answer is not None
        definitive = outcome.kind in ("ok", "rejected") or (
            outcome.kind == "ambiguous" and answered
        )
        status = outcome.status or 0
        reason = outcome.error or ""
        if definitive:
            self._latency(outcome.elapsed_s * 1000, outcome)
        else:
            self.failures += 1
            self.last_error, self.last_error_at = reason or outcome.kind, time.time()
        network_breaker = self.network(network)
        # The upstream's own breaker judges the process: did it take the call at all? A refused
        # connection, or a refusal of *us* (credentials, quota), count against it.
        if outcome.never_arrived or status in (401, 403, 407, 429):
            self.breaker.record(False, reason)
            network_breaker.release()
            return
        # Everything else (an answer, a timeout, a 5xx, garbage) may be about one chain only:
        # a facilitator whose RPC for one network is broken still serves the others.
        network_breaker.record(definitive, reason)
        if definitive or (answered and status < 500):
            self.breaker.record(True)
        else:
            self.breaker.release()  # no verdict about the process either way

    def record_probe(self, error: str | None) -> None:
        """Count a ``/supported`` probe; ``error`` is None when it succeeded."""
        self.last_probe_at = time.time()
        if error is None:
            self.probe_failures, self.probe_successes = 0, self.probe_successes + 1
            if self.probe_state == "unknown" or (
                self.probe_state == "unhealthy" and self.probe_successes >= self.healthy_threshold
            ):
                self.probe_state = "healthy"  # the state watcher logs and alerts on changes
            for breaker in (self.breaker, *self.networks.values()):
                breaker.probe_succeeded()
            return
        self.probe_successes, self.probe_failures = 0, self.probe_failures + 1
        self.last_probe_error = error
        self.last_error, self.last_error_at = error, time.time()
        if self.probe_state != "unhealthy" and self.probe_failures >= self.unhealthy_threshold:
            self.probe_state = "unhealthy"

    def total_ejections(self) -> int:
        """Ejections of the upstream and of all its networks since start."""
        return self.breaker.total_ejections + sum(b.total_ejections for b in self.networks.values())

    def adaptive_hedge_ms(self, floor_ms: float) -> float:
        """About the p95 of recent verify latencies, never below ``floor_ms``."""
        samples = self._verify_latencies
        if len(samples) < 10:
            ewma = self.latency_ewma_ms
            return max(floor_ms, 2 * ewma) if ewma is not None else floor_ms
        if self._p95_ms is None or self._since_p95 >= P95_REFRESH:
            self._p95_ms = statistics.quantiles(samples, n=20)[18]
            self._since_p95 = 0
        return max(floor_ms, self._p95_ms)

    def state(self) -> tuple[str, str]:
        """(state, reason) for /status.

        drained, unhealthy (probes), ejected, half_open, degraded (ejected on some networks
        only), unknown (never probed, no traffic) or healthy.
        """
        if self.drained:
            return "drained", "drained by operator"
        if self.probe_state == "unhealthy":
            return "unhealthy", f"{self.probe_failures} probes failed: {self.last_probe_error}"
        state = self.breaker.current_state()
        if state == "half_open":
            return "half_open", "ejection over: the next request is a trial"
        if state == "open":
            return "ejected", str(self.breaker.last_ejection_reason)
        ejected = [n for n, b in sorted(self.networks.items()) if b.current_state() == "open"]
        if ejected:
            first = self.networks[ejected[0]].last_ejection_reason
            return "degraded", f"ejected on {', '.join(ejected)}: {first}"
        if self.probe_state == "unknown" and not self.requests:
            return "unknown", "not probed yet"
        return "healthy", "answering"

    def network_status(self) -> JSONObject:
        return {
            network: {
                "state": "ejected" if b.current_state() == "open" else b.state,
                "consecutive_failures": b.consecutive_failures,
                "ejections": b.ejections,
                "ejected_for_s": round(b.remaining_s(), 3),
                "last_ejection_reason": b.last_ejection_reason,
            }
            for network, b in sorted(self.networks.items())
        }

    def _latency(self, elapsed_ms: float, outcome: Outcome) -> None:
        # Only verifies: a settle's time is mostly the chain's, and would make an upstream
        # that settles a lot look slow to the latency strategy and the hedge delay.
        if outcome.operation != "verify":
            return
        previous = self.latency_ewma_ms
        self.latency_ewma_ms = (
            elapsed_ms
            if previous is None
            else EWMA_ALPHA * elapsed_ms + (1 - EWMA_ALPHA) * previous
        )
        self._verify_latencies.append(elapsed_ms)
        self._since_p95 += 1
