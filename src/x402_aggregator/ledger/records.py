"""What the ledger keeps about a payment: its record, its attempts, and the facts it is keyed by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .._types import JSONObject
from ..protocol import PaymentRequest
from ..schemes import canonical_hash

#: ``pending``: an instance owns the payment and may be talking to an upstream right now.
#: ``settled``: it moved, ``transaction`` says where. ``failed``: nothing moved, a retry is fresh.
#: ``ambiguous``: an attempt may have moved it and nobody knows yet. ``pending_onchain``: an
#: upstream sent a transaction that is not confirmed yet.
State = Literal["pending", "settled", "failed", "ambiguous", "pending_onchain"]
STATES: tuple[State, ...] = ("pending", "settled", "failed", "ambiguous", "pending_onchain")
#: States a background resolver works on.
UNRESOLVED: tuple[State, ...] = ("ambiguous", "pending_onchain")
#: Attempt outcomes after which the upstream may hold the payment (never sent elsewhere blindly).
MAY_HAVE_ARRIVED = frozenset({None, "ambiguous", "pending"})


@dataclass(frozen=True, slots=True)
class Payment:
    """The facts of a payment the ledger indexes, taken from the request once."""

    id: str
    network: str
    scheme: str
    x402_version: int
    asset: str | None
    payer: str | None
    nonce: str | None
    #: Unix time after which the authorization can no longer move money (None: not known).
    valid_before: int | None
    #: sha256 of the canonical ``paymentPayload``: the signed part, whatever requirements say.
    payload_hash: str
    request: bytes = field(repr=False)

    @classmethod
    def of(cls, request: PaymentRequest, data: JSONObject | None = None) -> Payment:
        """The payment's facts; ``data`` is ``request.body`` already parsed, if at hand."""
        if data is None:
            data = orjson.loads(request.body)
        facts = request.facts
        return cls(
            id=facts.identity,
            network=request.kind.network,
            scheme=request.kind.scheme,
            x402_version=request.kind.version,
            asset=facts.asset,
            payer=facts.payer,
            nonce=facts.nonce,
            valid_before=facts.valid_before,
            payload_hash=canonical_hash(data.get("paymentPayload", {})),
            request=request.body,
        )


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One call made for a payment: a settle at an upstream, or a read of the chain."""

    n: int
    kind: Literal["settle", "chain"]
    upstream: str | None
    sent_at: float
    finished_at: float | None = None
    #: ok, rejected, retryable, ambiguous, pending (a settle); used, unused, error (the chain).
    outcome: str | None = None
    http_status: int | None = None
    transaction: str | None = None
    response: JSONObject | None = None
    error: str | None = None

    def public(self) -> JSONObject:
        return {
            "n": self.n,
            "kind": self.kind,
            "upstream": self.upstream,
            "sent_at": self.sent_at,
            "finished_at": self.finished_at,
            "outcome": self.outcome,
            "http_status": self.http_status,
            "transaction": self.transaction,
            "response": self.response,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How attempt ``n`` ended, as written to its row."""

    n: int
    outcome: str
    http_status: int | None = None
    transaction: str | None = None
    response: JSONObject | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Record(Payment):
    """A payment as the ledger holds it: what happened to it, and (when asked for) its attempts.

    ``id`` names the payment (see :class:`~x402_aggregator.schemes.PaymentFacts`).
    """

    state: State
    version: int
    owner: str | None
    upstream: str | None = None
    transaction: str | None = None
    #: The final answer's body (what a successful settle reported).
    response: bytes | None = field(default=None, repr=False)
    reported: bool = False
    note: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float = 0.0
    next_check_at: float | None = None
    checks: int = 0
    attempt_count: int = 0
    attempts: tuple[AttemptRecord, ...] = ()

    @property
    def sticky(self) -> str | None:
        """The upstream the payment may have reached last (only it may be asked again)."""
        for attempt in reversed(self.attempts):
            if attempt.kind == "settle" and attempt.outcome in MAY_HAVE_ARRIVED:
                return attempt.upstream
        return None

    def public(self) -> JSONObject:
        """The record for the status API: everything but the signed request itself."""
        return {
            "id": self.id,
            "state": self.state,
            "network": self.network,
            "scheme": self.scheme,
            "x402_version": self.x402_version,
            "asset": self.asset,
            "payer": self.payer,
            "nonce": self.nonce,
            "valid_before": self.valid_before,
            "upstream": self.upstream,
            "transaction": self.transaction,
            "reported": self.reported,
            "note": self.note,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "next_check_at": self.next_check_at,
            "checks": self.checks,
            "response": _json_or_none(self.response),
            "attempts": [a.public() for a in self.attempts],
        }


def _json_or_none(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
