"""The settlement ledger: durable records of every settle, claimed one owner at a time.

SQL text is built only from constants here (column lists, placeholder counts); every value
travels as a bound parameter, hence the ``noqa: S608`` marks.

A payment's row is *claimed* before anything is sent: the first instance to insert it (or to
bump its ``version`` from the value it read) owns it; every later write by the owner is fenced
by that version, so an instance that was presumed dead cannot overwrite its successor's result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import orjson

from ..errors import Fenced, LedgerError
from .base import Database, Row
from .database import connect
from .records import STATES, UNRESOLVED, AttemptEnd, AttemptRecord, Payment, Record, State

logger = logging.getLogger("x402_aggregator.ledger")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE settlements (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            version BIGINT NOT NULL,
            owner TEXT,
            network TEXT NOT NULL,
            scheme TEXT NOT NULL,
            x402_version INTEGER NOT NULL,
            asset TEXT,
            payer TEXT,
            nonce TEXT,
            valid_before BIGINT,
            payload_hash TEXT NOT NULL,
            request TEXT NOT NULL,
            upstream TEXT,
            tx TEXT,
            response TEXT,
            reported INTEGER NOT NULL DEFAULT 0,
            note TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            next_check_at DOUBLE PRECISION,
            checks INTEGER NOT NULL DEFAULT 0,
            attempt_count INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX settlements_state ON settlements (state, next_check_at)",
        "CREATE INDEX settlements_tx ON settlements (tx)",
        "CREATE INDEX settlements_expiry ON settlements (expires_at)",
        """CREATE TABLE attempts (
            settlement_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            kind TEXT NOT NULL,
            upstream TEXT,
            instance TEXT,
            sent_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION,
            outcome TEXT,
            http_status INTEGER,
            tx TEXT,
            response TEXT,
            error TEXT,
            PRIMARY KEY (settlement_id, n)
        )""",
        """CREATE TABLE idempotency_keys (
            idem_key TEXT PRIMARY KEY,
            settlement_id TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            status INTEGER NOT NULL,
            response TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            process_start TEXT,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL
        )""",
    ),
)

#: The claim a write is fenced by is still the writer's.
_CLAIM_HELD = "SELECT 1 FROM settlements WHERE id = ? AND version = ?"
ClaimStatus = Literal["fresh", "resume", "settled", "busy"]
_COLUMNS = (
    "id, state, version, owner, network, scheme, x402_version, asset, payer, nonce, valid_before,"
    " payload_hash, request, upstream, tx, response, reported, note, created_at, updated_at,"
    " expires_at, next_check_at, checks, attempt_count"
)


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


@dataclass(frozen=True, slots=True)
class IdempotentResponse:
    settlement_id: str
    request_hash: str
    status: int
    body: bytes


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
        self.instance_timeout_s = instance_timeout_s
        self.instance = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        #: Boot and pid namespace: pids can only be compared between processes that share both.
        self._namespace = _pid_namespace()
        self.process_start = f"{self._namespace}{_process_start(self.pid)}"
        #: Settlements this instance is working on right now, with how many tasks (see
        #: :meth:`working`).
        self.busy: Counter[str] = Counter()
        self.started_at = time.time()
        self._heartbeat: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Ledger:
        return cls(connect(url), **kwargs)

    async def open(self, *, heartbeat: bool = True) -> None:
        """Migrate the schema and announce this instance (then keep announcing it)."""
        await self.db.migrate(MIGRATIONS)
        await self.beat()
        if heartbeat and self._heartbeat is None:  # opened again after a failure: one is enough
            self._heartbeat = asyncio.create_task(self._beat_forever(), name="ledger heartbeat")

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        await self.db.aclose()

    async def beat(self) -> None:
        now = time.time()
        await self.db.execute(
            "INSERT INTO instances (id, host, pid, process_start, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            self.instance,
            self.host,
            self.pid,
            self.process_start,
            self.started_at,
            now,
        )

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.instance_timeout_s / 4)
            try:
                await self.beat()
            except LedgerError as exc:
                logger.error("ledger heartbeat failed: %s", exc)

    # -- claiming ------------------------------------------------------------------------------

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
            record = await self.get(payment.id)
            if record is None:
                continue  # purged between the two statements
            if record.state == "settled":
                return Claim("settled", record)
            if record.state == "pending" and not await self.orphaned(record.owner, record.id):
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

    async def orphaned(self, owner: str | None, settlement_id: str | None = None) -> bool:
        """True when ``owner`` is gone: its heartbeat stopped, or its process is dead.

        This instance's own claim is orphaned when nothing else here works on it (a settle
        that ended in an error left it pending): ``busy`` counts the tasks working on each
        settlement, the asking one included.
        """
        if owner is None:
            return True
        if owner == self.instance:
            # Whoever asks holds ``working`` for it: anyone else here means it is in hand.
            return settlement_id is not None and self.busy[settlement_id] <= 1
        rows = await self.db.fetch(
            "SELECT host, pid, process_start, heartbeat_at FROM instances WHERE id = ?", owner
        )
        if not rows:
            return True
        row = rows[0]
        if time.time() - float(row["heartbeat_at"]) > self.instance_timeout_s:
            return True
        started = str(row["process_start"] or "")
        if row["host"] == self.host and started.startswith(self._namespace):
            # Same host, same boot, same pid namespace: a dead owner is known at once (kill -9,
            # a restarted process that reuses the pid), without waiting for its heartbeat.
            # Containers sharing a hostname have their own pid namespaces: heartbeat only.
            pid = int(row["pid"])
            return _process_start(pid) != started.removeprefix(self._namespace)
        return False

    @contextmanager
    def working(self, settlement_id: str) -> Iterator[None]:
        """Mark a settlement as worked on by this instance (its pending claim is not orphaned)."""
        self.busy[settlement_id] += 1
        try:
            yield
        finally:
            self.busy[settlement_id] -= 1
            if not self.busy[settlement_id]:
                del self.busy[settlement_id]

    # -- writing, fenced by the claim -----------------------------------------------------------

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

    # -- reading -------------------------------------------------------------------------------

    async def get(self, settlement_id: str, *, attempts: bool = True) -> Record | None:
        """The record, with its attempts unless ``attempts`` is false (a poll of its state)."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM settlements WHERE id = ?",  # noqa: S608 (constant)
            settlement_id,
        )
        if not rows:
            return None
        if not attempts:
            return _record(rows[0])
        found = await self.db.fetch(
            "SELECT n, kind, upstream, sent_at, finished_at, outcome, http_status, tx, response,"
            " error FROM attempts WHERE settlement_id = ? ORDER BY n",
            settlement_id,
        )
        return replace(_record(rows[0]), attempts=tuple(_attempt(a) for a in found))

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
            f"SELECT {_COLUMNS} FROM settlements{clause} ORDER BY created_at DESC LIMIT ?",  # noqa: S608
            *args,
            limit,
        )
        return [_record(row) for row in rows]

    async def due(self, limit: int = 100, *, everything: bool = False) -> list[Record]:
        """Unresolved records whose next check is due (or all: ``everything``), and pending
        ones whose owner is gone."""
        now = time.time()
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM settlements WHERE COALESCE(next_check_at, 0) <= ?"  # noqa: S608
            " AND (state IN (?, ?) OR state NOT IN (?, ?, ?, ?, ?)"
            " OR (state = 'pending' AND updated_at < ?)) ORDER BY updated_at LIMIT ?",
            float("inf") if everything else now,
            *UNRESOLVED,
            *STATES,
            now - self.instance_timeout_s / 2,
            limit,
        )
        records = [_record(row) for row in rows]
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

    # -- idempotency keys ----------------------------------------------------------------------

    async def idempotent_response(self, key: str) -> IdempotentResponse | None:
        rows = await self.db.fetch(
            "SELECT settlement_id, request_hash, status, response FROM idempotency_keys"
            " WHERE idem_key = ?",
            key,
        )
        if not rows:
            return None
        row = rows[0]
        return IdempotentResponse(
            row["settlement_id"], row["request_hash"], int(row["status"]), row["response"].encode()
        )

    async def remember_response(
        self,
        key: str,
        settlement_id: str,
        request_hash: str,
        status: int,
        body: bytes,
        valid_before: int | None,
    ) -> None:
        now = time.time()
        await self.db.execute(
            "INSERT INTO idempotency_keys (idem_key, settlement_id, request_hash, status,"
            " response, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (idem_key) DO NOTHING",
            key,
            settlement_id,
            request_hash,
            status,
            body.decode(),
            now,
            self._expiry(valid_before, now),
        )

    def _expiry(self, valid_before: int | None, now: float) -> float:
        # Past validBefore no facilitator can move the payment any more; the margin keeps the
        # record for audit and for late retries.
        base = float(valid_before) if valid_before is not None and valid_before < 2**53 else now
        return max(base, now) + self.retention_margin_s


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


def _record(row: Row) -> Record:
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


def _attempt(row: Row) -> AttemptRecord:
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


def _pid_namespace() -> str:
    """``<boot id>/<pid namespace inode>/``, or a random value where these cannot be read."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return f"{uuid.uuid4().hex}/"  # never equal to another process's: heartbeat only
    return f"{boot}/{namespace}/"


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (pid + start tick on Linux): tells a reused pid apart.

    None if there is no such process. Elsewhere, just whether the pid is alive.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # Field 22 (starttime) comes after the command name, which may contain spaces.
            fields = stat.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None  # exited, not yet reaped by its parent
        return f"{pid}:{int(fields[19])}"
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"{pid}:alive"
