"""Percentiles and latency summaries shared by the sections."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """p50/p90/p99/max of a latency sample (milliseconds unless said otherwise)."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        return cls(
            len(samples),
            percentile(samples, 50),
            percentile(samples, 90),
            percentile(samples, 99),
            max(samples) if samples else math.nan,
        )

    def minus(self, other: Summary) -> Summary:
        """Quantile by quantile difference (e.g. through the aggregator minus direct)."""
        return Summary(
            self.count,
            self.p50 - other.p50,
            self.p90 - other.p90,
            self.p99 - other.p99,
            self.max - other.max,
        )


def ms(value: float, digits: int = 2) -> str:
    """A number for a table; '-' for NaN."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}"
