"""Claiming a payment, and the writes fenced by the claim: the ledger's money-guarding core.

A payment's row is *claimed* before anything is sent: the first instance to insert it (or to
bump its ``version`` from the value it read) owns it; every later write by the owner is fenced
by that version, so an instance that was presumed dead cannot overwrite its successor's result.
Kept apart from reading and upkeep (:mod:`.store`) so that the claim and the fence on each write
can be checked in one place.

SQL text is built only from constants here (``_CLAIM_HELD``); every value travels as a bound
parameter, hence the ``noqa: S608`` mark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import orjson

from ..errors import Fenced, LedgerError
from .base import Database
from .liveness import Instances
from .records import AttemptEnd, Payment, Record, State

logger = logging.getLogger("x402_aggregator.ledger")

#: The claim a write is fenced by is still the writer's.
_CLAIM_HELD = "SELECT 1 FROM settlements WHERE id = ? AND version = ?"
ClaimStatus = Literal["fresh", "resume", "settled", "busy"]


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of claiming a payment.

    ``fresh``: ours, nothing can have moved (new, or every earlier attempt failed definitively).
    ``resume``: ours, but an earlier attempt may have moved money (``previous`` says how it was
    left); only evidence may decide. ``settled``: it already moved. ``busy``: a live instance
    owns it right now.
    """

    status: ClaimStatus
    record: Record
    previous: State | None = None


class Claims:
    """Claims on payments by this instance, and the writes made under them."""

    def __init__(
        self,
        db: Database,
        instances: Instances,
        *,
        read: Callable[[str], Awaitable[Record | None]],
        expiry: Callable[[int | None, float], float],
    ) -> None:
        self.db = db
        self._instances = instances
        #: This instance's id: the ``owner`` of what it claims.
        self.instance = instances.instance
        #: The record of a settlement, with its attempts (:meth:`.Ledger.get`).
        self._read = read
        #: When a record written at ``now`` for a payment valid before ``valid_before`` expires.
        self._expiry = expiry

    async def claim(self, payment: Payment) -> Claim:
        """Make this instance the payment's owner, or say why it cannot be (settled, busy)."""
        for _ in range(10):
            now = time.time()
            inserted = await self.db.execute(
                "INSERT INTO settlements (id, state, version, owner, network, scheme, x402_version,"
                " asset, payer, nonce, valid_before, payload_hash, request, created_at, updated_at,"
                " expires_at) VALUES (?, 'pending', 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                payment.id,
                self.instance,
                payment.network,
                payment.scheme,
                payment.x402_version,
                payment.asset,
                payment.payer,
                payment.nonce,
                payment.valid_before,
                payment.payload_hash,
                payment.request.decode(),
                now,
                now,
                self._expiry(payment.valid_before, now),
            )
            if inserted:
                return Claim("fresh", _new_record(payment, self.instance, now))
            record = await self._read(payment.id)
            if record is None:
                continue  # purged between the two statements
            if record.state == "settled":
                return Claim("settled", record)
            if record.state == "pending" and not await self._instances.orphaned(
                record.owner, record.id
            ):
                return Claim("busy", record)
            taken = await self.db.execute(
                # attempt_count too: an attempt the old owner began after we read the record
                # would otherwise be missed, and a resume taken for a fresh start.
                "UPDATE settlements SET state = 'pending', owner = ?, version = version + 1,"
                " updated_at = ? WHERE id = ? AND version = ? AND attempt_count = ?",
                self.instance,
                now,
                payment.id,
                record.version,
                record.attempt_count,
            )
            if not taken:
                continue  # someone else moved it first: look again
            mine = replace(record, state="pending", owner=self.instance, version=record.version + 1)
            may_have_moved = record.state != "failed" and (
                record.state != "pending" or record.sticky is not None
            )
            return Claim("resume" if may_have_moved else "fresh", mine, record.state)
        raise LedgerError(f"could not claim settlement {payment.id}: too much contention")

    async def begin_attempt(
        self, record: Record, n: int, kind: Literal["settle", "chain"], upstream: str | None
    ) -> None:
        """Write that attempt ``n`` is about to be made, durably, before it is."""
        now = time.time()
        statements = [
            (
                "UPDATE settlements SET upstream = COALESCE(?, upstream), attempt_count = ?,"
                " updated_at = ? WHERE id = ? AND version = ?",
                (upstream if kind == "settle" else None, n, now, record.id, record.version),
            ),
            (
                # Only while the claim is ours: a fenced-out owner must not add attempt rows.
                "INSERT INTO attempts (settlement_id, n, kind, upstream, instance, sent_at)"
                " SELECT CAST(? AS TEXT), CAST(? AS INTEGER), CAST(? AS TEXT), CAST(? AS TEXT),"
                " CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION) WHERE EXISTS"
                f" ({_CLAIM_HELD}) ON CONFLICT (settlement_id, n) DO NOTHING",
                (record.id, n, kind, upstream, self.instance, now, record.id, record.version),
            ),
        ]
        counts = await self.db.batch(statements)
        if not counts[0]:
            raise Fenced(f"settlement {record.id} was claimed by another instance")

    async def end_attempt(self, record: Record, end: AttemptEnd) -> None:
        sql, args = _end_attempt(record, end)
        await self.db.execute(sql, *args)

    async def finish(
        self,
        record: Record,
        state: State,
        *,
        transaction: str | None = None,
        response: bytes | None = None,
        reported: bool = False,
        note: str | None = None,
        next_check_at: float | None = None,
        checks: int | None = None,
        attempt: AttemptEnd | None = None,
    ) -> bool:
        """Record how the settle ended and release the claim; False if we had lost it."""
        statements = []
        if attempt is not None:
            statements.append(_end_attempt(record, attempt))
        statements.append(
            (
                "UPDATE settlements SET state = ?, owner = NULL, tx = COALESCE(?, tx),"
                " response = COALESCE(?, response), reported = ?, note = ?, updated_at = ?,"
                " next_check_at = ?, checks = ? WHERE id = ? AND version = ?",
                (
                    state,
                    transaction,
                    response.decode() if response is not None else None,
                    int(reported or record.reported),
                    note,
                    time.time(),
                    next_check_at,
                    record.checks if checks is None else checks,
                    record.id,
                    record.version,
                ),
            )
        )
        counts = await self.db.batch(statements)
        if not counts[-1]:
            logger.error("settlement %s was claimed by another instance meanwhile", record.id)
        return bool(counts[-1])

    async def defer(self, record: Record, note: str, seconds: float) -> None:
        """Leave a record alone for a while (one the resolver cannot act on)."""
        await self.db.execute(
            "UPDATE settlements SET next_check_at = ?, note = ? WHERE id = ? AND version = ?",
            time.time() + seconds,
            note,
            record.id,
            record.version,
        )

    async def mark_reported(self, settlement_id: str) -> bool:
        """Claim the one report of a success; True for exactly one caller, across instances."""
        return bool(
            await self.db.execute(
                "UPDATE settlements SET reported = 1, updated_at = ?"
                " WHERE id = ? AND state = 'settled' AND reported = 0",
                time.time(),
                settlement_id,
            )
        )


def _end_attempt(record: Record, end: AttemptEnd) -> tuple[str, tuple[Any, ...]]:
    return (
        "UPDATE attempts SET finished_at = ?, outcome = ?, http_status = ?, tx = ?, response = ?,"  # noqa: S608
        f" error = ? WHERE settlement_id = ? AND n = ? AND EXISTS ({_CLAIM_HELD})",
        (
            time.time(),
            end.outcome,
            end.http_status,
            end.transaction,
            orjson.dumps(end.response).decode() if end.response is not None else None,
            end.error,
            record.id,
            end.n,
            record.id,
            record.version,
        ),
    )


def _new_record(payment: Payment, owner: str, now: float) -> Record:
    known = {f.name: getattr(payment, f.name) for f in fields(Payment)}
    return Record(**known, state="pending", version=1, owner=owner, created_at=now, updated_at=now)
