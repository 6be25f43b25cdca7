"""Prometheus metrics: named once, bounded labels (upstream names come only from configuration).

Counters and histograms are updated on the request path and work across uvicorn workers
(prometheus-client's multiprocess mode, enabled by ``PROMETHEUS_MULTIPROC_DIR``). Health state
(up, state, ejections) is read from the engine when scraped: health is per process, so each
worker reports its own view.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._types import Operation

if TYPE_CHECKING:
    from .health import UpstreamHealth
    from .outcome import Outcome

PREFIX = "x402_aggregator"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STATES = ("healthy", "degraded", "half_open", "ejected", "unhealthy", "drained", "unknown")

# One registry for the counters and histograms of this process; in multiprocess mode the
# exposition reads every worker's files instead.
_REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    f"{PREFIX}_requests_total",
    "Requests answered, by what the client saw.",
    ["operation", "outcome"],
    registry=_REGISTRY,
)
UPSTREAM_REQUESTS = Counter(
    f"{PREFIX}_upstream_requests_total",
    "Attempts sent to upstreams, by how they ended.",
    ["upstream", "operation", "outcome"],
    registry=_REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    f"{PREFIX}_upstream_latency_seconds",
    "Time an upstream took to answer (or fail).",
    ["upstream", "operation"],
    buckets=LATENCY_BUCKETS,
    registry=_REGISTRY,
)
HEDGES = Counter(
    f"{PREFIX}_hedges_total", "Verifies sent to a second upstream early.", [], registry=_REGISTRY
)
FAILOVERS = Counter(
    f"{PREFIX}_failovers_total",
    "Attempts moved to the next upstream.",
    ["operation"],
    registry=_REGISTRY,
)
SETTLEMENTS = Counter(
    f"{PREFIX}_settlements_total",
    "Settle results reported to clients.",
    ["result"],
    registry=_REGISTRY,
)
SETTLEMENTS_RESOLVED = Counter(
    f"{PREFIX}_settlements_resolved_total",
    "Unresolved settles (ambiguous, pending on chain) resolved in the background, by result.",
    ["result"],
    registry=_REGISTRY,
)
ACCESS_REFUSED = Counter(
    f"{PREFIX}_access_refused_total",
    "Facilitator API calls refused by access control (unauthorized, rate_limited), by the "
    "configured name of the caller's key ('-' when it presented none that is known).",
    ["reason", "key"],
    registry=_REGISTRY,
)


# Label children by their (bounded) label values: ``labels()`` validates and locks on every call,
# a few per cent of a verify's CPU.
_children: dict[tuple[object, ...], Any] = {}


def _child(metric: Counter | Histogram, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def record_request(operation: Operation, outcome: str) -> None:
    _child(REQUESTS, operation, outcome).inc()


def record_attempt(upstream: str, outcome: Outcome) -> None:
    _child(UPSTREAM_REQUESTS, upstream, outcome.operation, outcome.kind).inc()
    _child(UPSTREAM_LATENCY, upstream, outcome.operation).observe(outcome.elapsed_s)


def record_refusal(reason: str, key: str) -> None:
    _child(ACCESS_REFUSED, reason, key).inc()


class Watched(Protocol):
    """What the health view reads of an upstream."""

    @property
    def name(self) -> str: ...

    @property
    def health(self) -> UpstreamHealth: ...


class HealthCollector(Collector):
    """Reads up/state/ejections from the engine at scrape time."""

    def __init__(self, upstreams: Callable[[], Iterable[Watched]], ambiguous: Callable[[], int]):
        self._upstreams = upstreams
        self._ambiguous = ambiguous

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_upstream_up", "1 if the upstream takes traffic now.", labels=["upstream"]
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_upstream_state",
            "The upstream's state (one-hot).",
            labels=["upstream", "state"],
        )
        ejections = CounterMetricFamily(
            f"{PREFIX}_upstream_ejections",
            "Ejections by outlier detection (upstream and per-network breakers).",
            labels=["upstream"],
        )
        for upstream in self._upstreams():
            current, _ = upstream.health.state()
            up.add_metric(
                [upstream.name], 1.0 if current in ("healthy", "degraded", "unknown") else 0.0
            )
            for name in STATES:
                state.add_metric([upstream.name, name], 1.0 if name == current else 0.0)
            ejections.add_metric([upstream.name], float(upstream.health.total_ejections()))
        yield up
        yield state
        yield ejections
        ambiguous = GaugeMetricFamily(
            f"{PREFIX}_ambiguous_settlements",
            "Settlements whose outcome is not known yet (ambiguous, pending on chain).",
        )
        ambiguous.add_metric([], float(self._ambiguous()))
        yield ambiguous


def exposition(collector: Collector) -> tuple[bytes, str]:
    """The /metrics body: this process's (or every worker's) metrics plus the health view."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Delegate(_REGISTRY))
    registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Delegate(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
