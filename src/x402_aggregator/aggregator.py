"""The engine: route each verify and settle to upstream facilitators, apart from any web framework.

The HTTP server and the in-process SDK client are thin faces over :class:`Aggregator`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from ._types import JSONObject, Operation
from .capabilities import merge_supported
from .config import Config
from .errors import RequestError
from .health import Prober
from .protocol import (
    NO_UPSTREAM_AVAILABLE,
    SETTLEMENT_OUTCOME_UNKNOWN,
    PaymentRequest,
    failure_body,
    network_hint,
    parse_request,
)
from .routing import PriorityRouter
from .transport import AiohttpTransport, Transport
from .upstream import Outcome, Upstream

logger = logging.getLogger("x402_aggregator")


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer the caller: an HTTP status, a JSON body and who produced it."""

    status: int
    body: bytes = field(repr=False)
    #: The upstream whose answer this is; None when the aggregator answered itself.
    upstream: str | None = None
    attempts: int = 0
    extension_responses: str | None = field(default=None, repr=False)

    def json(self) -> JSONObject:
        value: JSONObject = orjson.loads(self.body)
        return value


class Aggregator:
    """Routes verify and settle to upstreams; owns their transport and background probes."""

    def __init__(self, config: Config, *, transport: Transport | None = None) -> None:
        self.config = config
        self._transport = transport or AiohttpTransport()
        upstreams = [Upstream(u, self._transport) for u in config.upstreams if u.enabled]
        self.router = PriorityRouter(upstreams)
        self._prober = Prober(self.router.upstreams, config.health, self._refresh_supported)
        self._supported: bytes = orjson.dumps({"kinds": [], "extensions": [], "signers": {}})
        self.totals: dict[str, int] = {"verify": 0, "settle": 0}

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self.router.upstreams

    async def start(self) -> None:
        """Probe upstreams (up to ``health.startup_wait_s``), then keep probing in background."""
        await self._prober.start()

    async def aclose(self) -> None:
        await self._prober.aclose()
        await self._transport.aclose()

    async def verify(self, body: bytes) -> Reply:
        """Verify a payment at the first candidate that gives a usable answer."""
        return await self._handle("verify", body)

    async def settle(self, body: bytes) -> Reply:
        """Settle a payment; move to another upstream only if the previous never received it."""
        return await self._handle("settle", body)

    def supported(self) -> bytes:
        """The merged ``/supported`` body, from cache: never waits on an upstream."""
        return self._supported

    async def _handle(self, operation: Operation, body: bytes) -> Reply:
        self.totals[operation] += 1
        try:
            request = parse_request(body, operation)
        except RequestError as exc:
            reply = failure_body(operation, exc.reason, exc.message, network_hint(body))
            return Reply(exc.status, orjson.dumps(reply))
        candidates = self.router.candidates(request)
        if not candidates:
            reason = self.router.unsupported_reason(request)
            kind = request.kind
            message = f"no upstream supports x402 v{kind.version} {kind.scheme} on {kind.network}"
            return Reply(200, orjson.dumps(failure_body(operation, reason, message, kind.network)))
        if operation == "verify":
            return await self._verify(request, candidates)
        return await self._settle(request, candidates)

    async def _verify(self, request: PaymentRequest, candidates: Sequence[Upstream]) -> Reply:
        failed: list[Outcome] = []
        fallback: Outcome | None = None
        for upstream in candidates:
            outcome = await self._call(upstream, "verify", request)
            if outcome.kind in ("ok", "rejected"):
                return _relay(outcome, len(failed) + 1)
            # A rejection that says more about the upstream than the payment is kept in case
            # no other upstream does better.
            if fallback is None and outcome.answer is not None:
                fallback = outcome
            failed.append(outcome)
        if fallback is not None:
            return _relay(fallback, len(failed))
        return _all_failed("verify", request, failed)

    async def _settle(self, request: PaymentRequest, candidates: Sequence[Upstream]) -> Reply:
        failed: list[Outcome] = []
        for upstream in candidates:
            outcome = await self._call(upstream, "settle", request)
            if outcome.kind == "retryable":  # for a settle: the request provably never arrived
                failed.append(outcome)
                continue
            if outcome.kind == "ambiguous" and outcome.answer is None:
                return _outcome_unknown(request, outcome, len(failed) + 1)
            return _relay(outcome, len(failed) + 1)
        return _all_failed("settle", request, failed)

    async def _call(
        self, upstream: Upstream, operation: Operation, request: PaymentRequest
    ) -> Outcome:
        outcome = await upstream.call(operation, request)
        upstream.health.record(outcome)
        if outcome.kind == "retryable":
            logger.warning(
                "%s at %s failed, trying the next upstream: %s",
                operation,
                upstream.name,
                outcome.error,
            )
        return outcome

    def _refresh_supported(self) -> None:
        with_caps = [up for up in self.upstreams if up.capabilities is not None]
        # Advertise what the live upstreams can do; if none is live, the last known view beats
        # an empty list, which would make resource servers starting now refuse every payment.
        live = [up for up in with_caps if up.health.state != "down"] or with_caps
        merged = merge_supported(up.capabilities for up in live if up.capabilities is not None)
        self._supported = orjson.dumps(merged)

    def status(self) -> JSONObject:
        """A JSON-ready snapshot of every upstream; contains no secrets."""
        return {
            "upstreams": [_upstream_status(up) for up in self.upstreams],
            "totals": {"requests": dict(self.totals)},
        }


def _relay(outcome: Outcome, attempts: int) -> Reply:
    """Answer with an upstream's (normalised) answer, always HTTP 200."""
    body = outcome.raw if outcome.raw is not None else orjson.dumps(outcome.answer)
    return Reply(200, body, outcome.upstream, attempts, outcome.extension_responses)


def _outcome_unknown(request: PaymentRequest, outcome: Outcome, attempts: int) -> Reply:
    logger.error(
        "settle at %s has an unknown outcome (payer %s, network %s): %s",
        outcome.upstream,
        request.payer,
        request.kind.network,
        outcome.error,
    )
    message = (
        f"the settlement was sent to {outcome.upstream} but its outcome is unknown "
        f"({outcome.error}); it may have been executed: do not retry it elsewhere"
    )
    body = failure_body("settle", SETTLEMENT_OUTCOME_UNKNOWN, message, request.kind.network)
    return Reply(200, orjson.dumps(body), outcome.upstream, attempts)


def _all_failed(operation: Operation, request: PaymentRequest, failed: Sequence[Outcome]) -> Reply:
    summary = "; ".join(f"{o.upstream}: {o.error}" for o in failed)
    logger.error("%s failed at every upstream: %s", operation, summary)
    body = failure_body(
        operation,
        NO_UPSTREAM_AVAILABLE,
        f"no upstream gave a usable answer ({summary})",
        request.kind.network,
    )
    body["upstreams"] = [{"name": o.upstream, "error": o.error} for o in failed]
    return Reply(502, orjson.dumps(body), None, len(failed))


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _upstream_status(upstream: Upstream) -> JSONObject:
    health, caps = upstream.health, upstream.capabilities
    return {
        "name": upstream.name,
        "url": upstream.display_url,
        "priority": upstream.config.priority,
        "weight": upstream.config.weight,
        "state": health.state,
        "reason": health.reason,
        "kinds": caps.describe() if caps is not None else None,
        "signers": caps.signers if caps is not None else None,
        "extensions": list(caps.extensions) if caps is not None else None,
        "requests": health.requests,
        "failures": health.failures,
        "consecutive_failures": health.consecutive_failures,
        "last_error": health.last_error,
        "last_error_at": _iso(health.last_error_at),
        "last_probe_at": _iso(health.last_probe_at),
        "last_latency_ms": health.last_latency_ms,
    }
