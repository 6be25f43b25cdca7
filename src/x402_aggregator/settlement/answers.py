"""Answers a settle gives from the ledger's records rather than from an upstream."""

from __future__ import annotations

from urllib.parse import quote

import orjson

from .._types import JSONObject
from ..ledger import Ledger, Payment, Record
from ..protocol import PaymentRequest
from ..replies import Reply, duplicate, outcome_unknown, result_of

SETTLEMENT_ID_HEADER = b"x402-settlement-id"


async def already_settled(
    ledger: Ledger, request: PaymentRequest, payment: Payment, record: Record
) -> Reply:
    """Report a success once (it may have been resolved without anyone being told)."""
    same_payment = record.payload_hash == payment.payload_hash
    if (
        not record.reported
        and same_payment
        and record.response is not None
        and await ledger.mark_reported(record.id)
    ):
        return Reply(200, record.response, record.upstream, 0, outcome="settled")
    return duplicate(request, record.transaction, record.upstream)


def from_record(request: PaymentRequest, record: Record) -> Reply:
    """Answer from what another instance recorded (a failure, or still unknown/pending)."""
    if record.state == "failed" and record.response is not None:
        outcome = result_of(orjson.loads(record.response))
        status = 502 if outcome == "no_upstream" else 200
        return Reply(status, record.response, record.upstream, 0, outcome=outcome)
    if record.state == "pending_onchain" and record.response is not None:
        return Reply(200, record.response, record.upstream, 0, outcome="pending")
    message = (
        f"another settle of this payment ended {record.state}"
        f"{f' ({record.note})' if record.note else ''}; settle it again later"
    )
    return outcome_unknown(request, message, record.upstream, 0)


def id_header(settlement_id: str) -> tuple[bytes, bytes]:
    """The ``X402-Settlement-Id`` header of a settle's answer."""
    # The id is built from fields of the caller's payload: percent-encode anything that is not
    # plainly safe, so that no byte of it can break the header (CR, LF, non-ASCII).
    return (SETTLEMENT_ID_HEADER, quote(settlement_id, safe="|:").encode("ascii"))


def idempotency_key_of(data: JSONObject) -> str | None:
    """The ``payment-identifier`` extension's id, which the SDKs send as an idempotency key."""
    payload = data.get("paymentPayload")
    extensions = payload.get("extensions") if isinstance(payload, dict) else None
    entry = extensions.get("payment-identifier") if isinstance(extensions, dict) else None
    if not isinstance(entry, dict):
        return None
    info = entry.get("info")
    value = info.get("id") if isinstance(info, dict) else entry.get("id")
    return f"payment-identifier:{value}" if isinstance(value, str) and value else None
