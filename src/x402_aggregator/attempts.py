"""One attempt at one upstream, with its bookkeeping: health, breakers, metrics, stats, logs.

Verify runs and settle runs both go through here, so every call is counted the same way.
"""

from __future__ import annotations

import logging

from . import metrics
from ._types import Operation
from .outcome import Outcome
from .protocol import PaymentRequest
from .routing import Attempt
from .upstream import Upstream

logger = logging.getLogger("x402_aggregator")


def claim(attempt: Attempt, request: PaymentRequest) -> bool | None:
    """Claim an available upstream (True), or send anyway in panic mode (False).

    None: the upstream became unavailable since planning (e.g. another request took its
    half-open trial); it is skipped now and only reached through panic mode.
    """
    if attempt.panic:
        return False
    return True if attempt.upstream.health.claim(request.kind.network) else None


async def send(
    upstream: Upstream,
    operation: Operation,
    request: PaymentRequest,
    timeout_s: float,
    claimed: bool,
) -> Outcome:
    """Call ``upstream`` and count what came back into its health and the metrics."""
    network = request.kind.network
    try:
        outcome = await upstream.call(operation, request, timeout_s=timeout_s)
    except BaseException:
        # A hedge that lost (cancelled), or a bug: no outcome to count, but a claimed
        # half-open trial must be given back or the upstream would stay out for good.
        if claimed:
            upstream.health.release(network)
        metrics.UPSTREAM_REQUESTS.labels(upstream.name, operation, "cancelled").inc()
        raise
    upstream.health.record(outcome, network)
    metrics.record_attempt(upstream.name, outcome)
    usable = outcome.kind in ("ok", "rejected") or outcome.answer is not None
    upstream.stats.add(operation, outcome.elapsed_s * 1000, usable)
    if outcome.kind == "retryable":
        logger.warning(
            "%s at %s failed, trying the next upstream: %s", operation, upstream.name, outcome.error
        )
    return outcome
