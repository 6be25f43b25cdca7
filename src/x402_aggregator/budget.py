"""Retry budget: extra attempts (failovers, hedges) may add only a share of the traffic.

Envoy's idea: when the whole pool is sick, retries multiply the load on it. Over a sliding
window, extra attempts are allowed while they stay under ``ratio * requests`` (or ``minimum``,
so a quiet service can still fail over).
"""

from __future__ import annotations

import math
import time
from collections import deque

from ._types import Clock


class RetryBudget:
    """Counts requests and extra attempts in one-second buckets over a sliding window."""

    def __init__(
        self, ratio: float, minimum: int, window_s: float, clock: Clock = time.monotonic
    ) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._window = max(1, math.ceil(window_s))
        self._clock = clock
        # (second, requests, retries), oldest first; running totals beside them.
        self._buckets: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    def request(self) -> None:
        """Count one incoming request."""
        self._bucket()[1] += 1
        self._requests += 1

    def try_acquire(self) -> bool:
        """Take one extra attempt if the budget allows it."""
        bucket = self._bucket()
        if self._retries + 1 > max(self._minimum, self._ratio * self._requests):
            return False
        bucket[2] += 1
        self._retries += 1
        return True

    def _bucket(self) -> list[int]:
        now = int(self._clock())
        while self._buckets and self._buckets[0][0] <= now - self._window:
            _, requests, retries = self._buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not self._buckets or self._buckets[-1][0] != now:
            self._buckets.append([now, 0, 0])
        return self._buckets[-1]
