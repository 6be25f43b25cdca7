"""Passive outlier detection: a circuit breaker per upstream and per (upstream, network).

Envoy's model: live outcomes feed a breaker; enough consecutive failures, or a high failure
rate over a window, *eject* the upstream for ``base * ejections`` seconds (capped). After that
time, or a good active probe, it is *half-open*: exactly one trial request decides whether it
closes again or is ejected for longer. Business rejections never count as failures.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ._types import Clock

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    #: Eject when more than this share of the last ``window`` calls failed...
    failure_rate: float = 0.5
    window: int = 20
    #: ...and at least this many calls are in the window.
    min_requests: int = 10
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0


@dataclass(slots=True)
class Breaker:
    """One breaker; mutated only on the event loop, so no locks."""

    policy: OutlierPolicy
    clock: Clock = time.monotonic
    state: BreakerState = "closed"
    ejections: int = 0
    #: Every ejection since start (``ejections`` is the back-off multiplier and can reset).
    total_ejections: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    last_ejection_reason: str | None = None
    last_ejected_at: float | None = None
    _recent: deque[bool] = field(default_factory=deque, repr=False)
    _trial_in_flight: bool = field(default=False, repr=False)
    _closed_at: float = field(default=0.0, repr=False)

    def allows(self) -> bool:
        """Whether a request may be sent now, without claiming the half-open trial."""
        self._refresh()
        return self.state == "closed" or (self.state == "half_open" and not self._trial_in_flight)

    def claim(self) -> bool:
        """Take the right to send one request; in half-open state only one caller gets it."""
        if not self.allows():
            return False
        if self.state == "half_open":
            self._trial_in_flight = True
        return True

    def release(self) -> None:
        """Give back a claimed trial without an outcome (e.g. the request was cancelled)."""
        self._trial_in_flight = False

    def record(self, ok: bool, reason: str = "") -> None:
        """Feed one live outcome: ``ok`` is any usable answer, including a business rejection."""
        self._trial_in_flight = False
        self._recent.append(ok)
        if len(self._recent) > self.policy.window:
            self._recent.popleft()
        if ok:
            self.consecutive_failures = 0
            if self.state == "half_open":
                self._close()
            return
        self.consecutive_failures += 1
        if self.state == "half_open":
            self._eject(f"trial request failed: {reason}")
        elif self.state == "closed":
            why = self._ejection_reason()
            if why:
                self._eject(f"{why}; last: {reason}" if reason else why)

    def probe_succeeded(self) -> None:
        """A good active probe ends an ejection early: the next request is the trial."""
        if self.state == "open":
            self.state = "half_open"

    def current_state(self) -> BreakerState:
        """The state now (an expired ejection reads as half-open)."""
        self._refresh()
        return self.state

    def remaining_s(self) -> float:
        return max(0.0, self.ejected_until - self.clock()) if self.state == "open" else 0.0

    def _refresh(self) -> None:
        if self.state == "open" and self.clock() >= self.ejected_until:
            self.state = "half_open"

    def _ejection_reason(self) -> str | None:
        policy = self.policy
        if self.consecutive_failures >= policy.consecutive_failures:
            return f"ejected after {self.consecutive_failures} consecutive failures"
        failures = self._recent.count(False)
        if len(self._recent) >= policy.min_requests and failures > policy.failure_rate * len(
            self._recent
        ):
            return f"ejected: {failures} of the last {len(self._recent)} calls failed"
        return None

    def _eject(self, reason: str) -> None:
        now = self.clock()
        # A long healthy stretch forgives earlier ejections, so one bad day is not forever.
        if self.state == "closed" and now - self._closed_at > self.policy.max_ejection_s:
            self.ejections = 0
        self.ejections += 1
        self.total_ejections += 1
        duration = min(self.policy.base_ejection_s * self.ejections, self.policy.max_ejection_s)
        self.state, self.ejected_until = "open", now + duration
        self.last_ejection_reason, self.last_ejected_at = reason, time.time()
        self._recent.clear()

    def _close(self) -> None:
        self.state, self.consecutive_failures = "closed", 0
        self._closed_at = self.clock()
        # Failures seen while ejected (panic-mode calls) must not re-eject the upstream at once.
        self._recent.clear()
