"""How a database row becomes a record or an attempt, without ever failing on a damaged one.

Kept apart from the queries so that every read (a claim's look, the CLI's list, the resolver's
due list) decodes a row the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

from .base import Row
from .records import STATES, AttemptRecord, Record, State

#: The ``settlements`` columns :func:`decode_record` reads, for ``SELECT`` lists.
COLUMNS = (
    "id, state, version, owner, network, scheme, x402_version, asset, payer, nonce, valid_before,"
    " payload_hash, request, upstream, tx, response, reported, note, created_at, updated_at,"
    " expires_at, next_check_at, checks, attempt_count"
)


def decode_record(row: Row) -> Record:
    """A row as a record; a damaged row becomes an ambiguous one (looked at, never re-sent)."""
    raw_state = row.get("state")
    note = row.get("note")
    state: State = "ambiguous"
    if raw_state in STATES:
        state = raw_state
    else:
        note = f"unreadable state {raw_state!r} in the ledger"
    return Record(
        id=str(row["id"]),
        state=state,
        version=_int(row.get("version")) or 0,
        owner=row.get("owner"),
        network=str(row.get("network") or ""),
        scheme=str(row.get("scheme") or ""),
        x402_version=_int(row.get("x402_version")) or 0,
        asset=row.get("asset"),
        payer=row.get("payer"),
        nonce=row.get("nonce"),
        valid_before=_int(row.get("valid_before")),
        payload_hash=str(row.get("payload_hash") or ""),
        request=str(row.get("request") or "").encode(),
        upstream=row.get("upstream"),
        transaction=row.get("tx"),
        response=row["response"].encode() if isinstance(row.get("response"), str) else None,
        reported=bool(row.get("reported")),
        note=note,
        created_at=_float(row.get("created_at")),
        updated_at=_float(row.get("updated_at")),
        expires_at=_float(row.get("expires_at")),
        next_check_at=row.get("next_check_at"),
        checks=_int(row.get("checks")) or 0,
        attempt_count=_int(row.get("attempt_count")) or 0,
    )


def decode_attempt(row: Row) -> AttemptRecord:
    """A row of ``attempts`` as an attempt; a response that is not a JSON object is dropped."""
    response: Any = None
    if isinstance(row.get("response"), str):
        try:
            response = orjson.loads(row["response"])
        except orjson.JSONDecodeError:
            response = None
    return AttemptRecord(
        n=_int(row.get("n")) or 0,
        kind="chain" if row.get("kind") == "chain" else "settle",
        upstream=row.get("upstream"),
        sent_at=_float(row.get("sent_at")),
        finished_at=row.get("finished_at"),
        outcome=row.get("outcome"),
        http_status=_int(row.get("http_status")),
        transaction=row.get("tx"),
        response=response if isinstance(response, dict) else None,
        error=row.get("error"),
    )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
