"""The engine's view of itself for ``/status`` and the dashboard: JSON-ready, never a secret."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from ._types import JSONObject, Operation
from .upstream import Upstream


def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC with milliseconds; None stays None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def upstreams_status(upstreams: Sequence[Upstream]) -> list[JSONObject]:
    """Every upstream's state, health and recent traffic, with its share of that traffic."""
    entries = [upstream_status(up) for up in upstreams]
    recent_total = sum(entry["recent"]["requests"] for entry in entries)
    for entry in entries:
        share = entry["recent"]["requests"] / recent_total if recent_total else None
        entry["traffic_share"] = round(share, 4) if share is not None else None
    return entries


def upstream_status(upstream: Upstream) -> JSONObject:
    health, caps = upstream.health, upstream.capabilities
    state, reason = health.state()
    breaker = health.breaker
    return {
        "name": upstream.name,
        "url": upstream.display_url,
        "priority": upstream.config.priority,
        "weight": upstream.config.weight,
        "state": state,
        "reason": reason,
        "probe": {
            "state": health.probe_state,
            "consecutive_failures": health.probe_failures,
            "consecutive_successes": health.probe_successes,
            "last_error": health.last_probe_error,
            "last_at": iso(health.last_probe_at),
        },
        "breaker": {
            "state": breaker.state,
            "consecutive_failures": breaker.consecutive_failures,
            "ejections": breaker.ejections,
            "ejected_for_s": round(breaker.remaining_s(), 3),
            "last_ejection_reason": breaker.last_ejection_reason,
            "last_ejected_at": iso(breaker.last_ejected_at),
        },
        "networks": health.network_status(),
        "kinds": caps.describe() if caps is not None else None,
        "signers": caps.signers if caps is not None else None,
        "extensions": list(caps.extensions) if caps is not None else None,
        "requests": health.requests,
        "failures": health.failures,
        "last_error": health.last_error,
        "last_error_at": iso(health.last_error_at),
        "latency_ewma_ms": health.latency_ewma_ms,
        "recent": upstream.stats.summary(),
    }


def timeline(
    upstreams: Iterable[Upstream], window_s: float, bucket_s: float, operation: Operation | None
) -> JSONObject:
    """Per upstream, calls and latency in time buckets, for the dashboard's chart."""
    return {
        "generated_at": iso(time.time()),
        "window_s": window_s,
        "bucket_s": bucket_s,
        "operation": operation,
        "upstreams": {
            up.name: up.stats.timeline(window_s, bucket_s, operation) for up in upstreams
        },
    }
