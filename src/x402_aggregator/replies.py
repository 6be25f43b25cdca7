"""What the aggregator answers: an HTTP status and an x402 body, relayed or written here."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from ._types import JSONObject, Operation
from .outcome import Outcome
from .protocol import (
    DUPLICATE_SETTLEMENT,
    NO_UPSTREAM_AVAILABLE,
    SETTLEMENT_OUTCOME_UNKNOWN,
    SETTLEMENT_PENDING,
    PaymentRequest,
    failure_body,
)

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
    #: What the client saw, as a bounded metrics label (valid, invalid, settled, unknown, ...).
    outcome: str = ""
    #: Extra response headers (the settlement id, an idempotent replay).
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def json(self) -> JSONObject:
        value: JSONObject = orjson.loads(self.body)
        return value


def result_of(answer: JSONObject) -> str:
    """A settle answer as a bounded result: settled, pending, unknown, no_upstream, failed."""
    if answer.get("success") is True:
        return "settled"
    return {
        SETTLEMENT_OUTCOME_UNKNOWN: "unknown",
        SETTLEMENT_PENDING: "pending",
        NO_UPSTREAM_AVAILABLE: "no_upstream",
        DUPLICATE_SETTLEMENT: "duplicate",
    }.get(str(answer.get("errorReason")), "failed")


def relay(outcome: Outcome, attempts: int, result: str = "") -> Reply:
    """Answer with an upstream's (normalised) answer, always HTTP 200."""
    body = outcome.raw if outcome.raw is not None else orjson.dumps(outcome.answer)
    return Reply(200, body, outcome.upstream, attempts, outcome.extension_responses, result)


def settled_by_chain(request: PaymentRequest, transaction: str, attempts: int) -> Reply:
    """A success proven by the chain (the authorization's log), not by an upstream's answer."""
    body: JSONObject = {
        "success": True,
        "transaction": transaction,
        "network": request.kind.network,
    }
    if request.payer:
        body["payer"] = request.payer
    return Reply(200, orjson.dumps(body), None, attempts, outcome="settled")


def outcome_unknown(
    request: PaymentRequest, message: str, upstream: str | None, attempts: int
) -> Reply:
    body = failure_body("settle", SETTLEMENT_OUTCOME_UNKNOWN, message, request.kind.network)
    return Reply(200, orjson.dumps(body), upstream, attempts, outcome="unknown")


def duplicate(request: PaymentRequest, transaction: str | None, upstream: str | None) -> Reply:
    """This payment was settled and reported already: say so, with the original transaction."""
    body = failure_body(
        "settle",
        DUPLICATE_SETTLEMENT,
        "this payment has already been settled; the transaction is the original one",
        request.kind.network,
    )
    body["transaction"] = transaction or ""
    if request.payer:
        body["payer"] = request.payer
    return Reply(200, orjson.dumps(body), upstream, 0, outcome="duplicate")


def all_failed(
    operation: Operation,
    request: PaymentRequest,
    failed: Sequence[Outcome],
    stopped_by: str | None = None,
) -> Reply:
    summary = "; ".join(f"{o.upstream}: {o.error}" for o in failed)
    if stopped_by:
        summary = f"{summary}; {stopped_by}" if summary else stopped_by
    logger.error("%s failed at every upstream: %s", operation, summary)
    body = failure_body(
        operation,
        NO_UPSTREAM_AVAILABLE,
        f"no upstream gave a usable answer ({summary})",
        request.kind.network,
    )
    body["upstreams"] = [{"name": o.upstream, "error": o.error} for o in failed]
    return Reply(502, orjson.dumps(body), None, len(failed), outcome="no_upstream")
