"""Recent traffic per upstream: percentiles, success rates and a timeline (status, dashboard).

Bounded memory: the last ``SAMPLES`` calls per upstream, whatever the traffic. Metrics for
Prometheus live in :mod:`.metrics`; this is what the aggregator shows about itself.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ._types import JSONObject, Operation

SAMPLES = 2000
#: /status percentiles cover this much recent time.
WINDOW_S = 300.0
#: Most settlements listed on the dashboard.
RECENT_SETTLEMENTS = 25


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall clock, seconds
    operation: Operation
    latency_ms: float
    ok: bool  # a usable answer (valid, invalid, settled, failed, pending)


class UpstreamStats:
    """The last calls of one upstream."""

    def __init__(self) -> None:
        self._samples: deque[Sample] = deque(maxlen=SAMPLES)

    def add(self, operation: Operation, latency_ms: float, ok: bool) -> None:
        self._samples.append(Sample(time.time(), operation, latency_ms, ok))

    def recent(self, window_s: float = WINDOW_S) -> list[Sample]:
        since = time.time() - window_s
        return [s for s in self._samples if s.at >= since]

    def summary(self, window_s: float = WINDOW_S) -> JSONObject:
        """Requests, success rate (with its Wilson lower bound) and latency percentiles."""
        samples = self.recent(window_s)
        good = sum(s.ok for s in samples)
        return {
            "window_s": window_s,
            "requests": len(samples),
            "success_rate": round(good / len(samples), 4) if samples else None,
            "success_rate_lower_bound": round(wilson_lower_bound(good, len(samples)), 4),
            "latency_ms": {
                operation: percentiles(s.latency_ms for s in samples if s.operation == operation)
                for operation in ("verify", "settle")
            },
        }

    def timeline(
        self, window_s: float, bucket_s: float, operation: Operation | None = None
    ) -> list[JSONObject]:
        """Per time bucket: calls, failures and latency p50/p95/p99, oldest first."""
        buckets: dict[int, list[Sample]] = {}
        for sample in self.recent(window_s):
            if operation is None or sample.operation == operation:
                buckets.setdefault(int(sample.at // bucket_s), []).append(sample)
        return [
            {
                "t": key * bucket_s,
                "count": len(group),
                "errors": sum(not s.ok for s in group),
                **{
                    k: v
                    for k, v in percentiles(s.latency_ms for s in group).items()
                    if k != "count"
                },
            }
            for key, group in sorted(buckets.items())
        ]


def percentiles(values: Iterable[float]) -> JSONObject:
    data = sorted(values)
    if not data:
        return {"count": 0, "p50": None, "p95": None, "p99": None}
    if len(data) == 1:
        only = round(data[0], 3)
        return {"count": 1, "p50": only, "p95": only, "p99": only}
    cuts = statistics.quantiles(data, n=100, method="inclusive")
    return {
        "count": len(data),
        "p50": round(cuts[49], 3),
        "p95": round(cuts[94], 3),
        "p99": round(cuts[98], 3),
    }


def wilson_lower_bound(successes: int, total: int, z: float = 1.96) -> float:
    """Lower bound of the 95 % Wilson score interval: a success rate that few calls can't fake."""
    if total == 0:
        return 0.0
    p = successes / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt((p * (1 - p) + z * z / (4 * total)) / total)
    return max(0.0, (centre - spread) / (1 + z * z / total))
