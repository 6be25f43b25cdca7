"""The settlement ledger callers hold: one object over the records, claims and liveness.

:class:`Ledger` opens the database, reads records and keeps them within retention; it hands
claiming and the fenced writes to :mod:`.claims`, instance liveness to :mod:`.liveness` and
idempotency keys to :mod:`.idempotency`, so that each of those stays one concept on its own
while callers keep one object.

SQL text is built only from constants here (column lists, placeholder counts); every value
travels as a bound parameter, hence the ``noqa: S608`` marks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Literal

from .base import Database
from .claims import Claim, Claims
from .database import connect
from .idempotency import IdempotencyKeys, IdempotentResponse
from .liveness import Instances
from .records import STATES, UNRESOLVED, AttemptEnd, Payment, Record, State
from .rows import COLUMNS, decode_attempt, decode_record
from .schema import MIGRATIONS


class Ledger:
    """Settlement records in SQLite or PostgreSQL (see :mod:`.database`)."""

    def __init__(
        self,
        db: Database,
        *,
        retention_margin_s: float = 7 * 86400,
        instance_timeout_s: float = 10.0,
    ) -> None:
        self.db = db
        self.retention_margin_s = retention_margin_s
        self._instances = Instances(db, instance_timeout_s=instance_timeout_s)
        self._claims = Claims(db, self._instances, read=self.get, expiry=self._expiry)
        self._keys = IdempotencyKeys(db, self._expiry)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Ledger:
        return cls(connect(url), **kwargs)

    async def open(self, *, heartbeat: bool = True) -> None:
        """Migrate the schema and announce this instance (then keep announcing it)."""
        await self.db.migrate(MIGRATIONS)
        await self.beat()
        if heartbeat:
            self._instances.start()

    async def aclose(self) -> None:
        await self._instances.stop()
        await self.db.aclose()

    @property
    def instance(self) -> str:
        """This instance's id: the ``owner`` of the payments it claims."""
        return self._instances.instance

    @property
    def host(self) -> str:
        return self._instances.host

    @property
    def pid(self) -> int:
        return self._instances.pid

    @property
    def process_start(self) -> str:
        return self._instances.process_start

    @property
    def started_at(self) -> float:
        return self._instances.started_at

    @property
    def instance_timeout_s(self) -> float:
        """How long an instance may go without a heartbeat before its claims are taken over."""
        return self._instances.instance_timeout_s

    @property
    def busy(self) -> Counter[str]:
        """Settlements this instance is working on right now, with how many tasks."""
        return self._instances.busy

    @property
    def _heartbeat(self) -> asyncio.Task[None] | None:
        # tests/test_settlement.py cancels it to make this instance look dead.
        return self._instances.heartbeat

    async def beat(self) -> None:
        """Announce this instance now."""
        await self._instances.beat()

    async def orphaned(self, owner: str | None, settlement_id: str | None = None) -> bool:
        """True when ``owner`` is gone (see :meth:`.Instances.orphaned`)."""
        return await self._instances.orphaned(owner, settlement_id)

    def working(self, settlement_id: str) -> AbstractContextManager[None]:
        """Mark a settlement as worked on by this instance (its pending claim is not orphaned)."""
        return self._instances.working(settlement_id)

    async def claim(self, payment: Payment) -> Claim:
        """Make this instance the payment's owner, or say why it cannot be (settled, busy)."""
        return await self._claims.claim(payment)

    async def begin_attempt(
        self, record: Record, n: int, kind: Literal["settle", "chain"], upstream: str | None
    ) -> None:
        """Write that attempt ``n`` is about to be made, durably, before it is."""
        await self._claims.begin_attempt(record, n, kind, upstream)

    async def end_attempt(self, record: Record, end: AttemptEnd) -> None:
        await self._claims.end_attempt(record, end)

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
        return await self._claims.finish(
            record,
            state,
            transaction=transaction,
            response=response,
            reported=reported,
            note=note,
            next_check_at=next_check_at,
            checks=checks,
            attempt=attempt,
        )

    async def defer(self, record: Record, note: str, seconds: float) -> None:
        """Leave a record alone for a while (one the resolver cannot act on)."""
        await self._claims.defer(record, note, seconds)

    async def mark_reported(self, settlement_id: str) -> bool:
        """Claim the one report of a success; True for exactly one caller, across instances."""
        return await self._claims.mark_reported(settlement_id)

    async def get(self, settlement_id: str, *, attempts: bool = True) -> Record | None:
        """The record, with its attempts unless ``attempts`` is false (a poll of its state)."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM settlements WHERE id = ?",  # noqa: S608 (constant)
            settlement_id,
        )
        if not rows:
            return None
        if not attempts:
            return decode_record(rows[0])
        found = await self.db.fetch(
            "SELECT n, kind, upstream, sent_at, finished_at, outcome, http_status, tx, response,"
            " error FROM attempts WHERE settlement_id = ? ORDER BY n",
            settlement_id,
        )
        return replace(decode_record(rows[0]), attempts=tuple(decode_attempt(a) for a in found))

    async def find(
        self,
        *,
        state: State | None = None,
        transaction: str | None = None,
        payer: str | None = None,
        limit: int = 50,
    ) -> list[Record]:
        """Newest first, without attempts."""
        where, args = [], []
        for column, value in (("state", state), ("tx", transaction), ("payer", payer)):
            if value is not None:
                where.append(f"LOWER({column}) = ?")
                args.append(value.lower())
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM settlements{clause} ORDER BY created_at DESC LIMIT ?",  # noqa: S608
            *args,
            limit,
        )
        return [decode_record(row) for row in rows]

    async def due(self, limit: int = 100, *, everything: bool = False) -> list[Record]:
        """Unresolved records whose next check is due (or all: ``everything``), and pending
        ones whose owner is gone."""
        now = time.time()
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM settlements WHERE COALESCE(next_check_at, 0) <= ?"  # noqa: S608
            " AND (state IN (?, ?) OR state NOT IN (?, ?, ?, ?, ?)"
            " OR (state = 'pending' AND updated_at < ?)) ORDER BY updated_at LIMIT ?",
            float("inf") if everything else now,
            *UNRESOLVED,
            *STATES,
            now - self.instance_timeout_s / 2,
            limit,
        )
        records = [decode_record(row) for row in rows]
        due = []
        for record in records:
            if record.state != "pending" or await self.orphaned(record.owner, record.id):
                due.append(record)
        return due

    async def count(self, states: Sequence[State] = UNRESOLVED) -> int:
        marks = ", ".join("?" for _ in states)
        rows = await self.db.fetch(
            f"SELECT COUNT(*) AS n FROM settlements WHERE state IN ({marks})",  # noqa: S608
            *states,
        )
        return int(rows[0]["n"])

    async def purge(self) -> int:
        """Forget records past retention (their authorization expired a margin ago)."""
        now = time.time()
        counts = await self.db.batch(
            [
                (
                    "DELETE FROM attempts WHERE settlement_id IN (SELECT id FROM settlements"
                    " WHERE expires_at < ? AND state <> 'pending')",
                    (now,),
                ),
                ("DELETE FROM settlements WHERE expires_at < ? AND state <> 'pending'", (now,)),
                ("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,)),
                ("DELETE FROM instances WHERE heartbeat_at < ?", (now - 86400,)),
            ]
        )
        return counts[1]

    async def idempotent_response(self, key: str) -> IdempotentResponse | None:
        """The answer remembered under idempotency key ``key``, if any."""
        return await self._keys.response(key)

    async def remember_response(
        self,
        key: str,
        settlement_id: str,
        request_hash: str,
        status: int,
        body: bytes,
        valid_before: int | None,
    ) -> None:
        """Keep the answer under idempotency key ``key``, unless one is kept already."""
        await self._keys.remember(key, settlement_id, request_hash, status, body, valid_before)

    def _expiry(self, valid_before: int | None, now: float) -> float:
        # Past validBefore no facilitator can move the payment any more; the margin keeps the
        # record for audit and for late retries.
        base = float(valid_before) if valid_before is not None and valid_before < 2**53 else now
        return max(base, now) + self.retention_margin_s
