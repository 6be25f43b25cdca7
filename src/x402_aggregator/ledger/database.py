"""The two databases the ledger runs on, behind four calls: fetch, execute, batch, migrate.

SQL is written once, with ``?`` placeholders and the subset both dialects share (``ON CONFLICT``,
``excluded.``, ``COALESCE``); the PostgreSQL driver numbers the placeholders. Decisions that need
a read and a write are made with optimistic conditional updates (``WHERE version = ?``), which
hold across processes on both without dialect-specific locking.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ..errors import LedgerError

Row = dict[str, Any]
Statement = tuple[str, Sequence[Any]]
T = TypeVar("T")
#: Advisory lock key (PostgreSQL) that serialises migrations between instances starting at once.
_MIGRATION_LOCK = 0x402_402


class Database(ABC):
    """A connection (pool) to the ledger's database."""

    #: ``sqlite`` or ``postgresql``.
    dialect: str
    #: Where the data lives, without credentials: for logs and the status page.
    display: str

    @abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Rows of a query, as dicts."""

    @abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement in its own transaction (durable on return); return the rowcount."""

    @abstractmethod
    async def batch(self, statements: Sequence[Statement]) -> list[int]:
        """Run statements in one transaction (one durable commit); return their rowcounts."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def migrate(self, migrations: Sequence[Sequence[str]]) -> int:
        """Bring the schema up to ``len(migrations)``; refuse a database from a newer version.

        Callers serialise this between processes (an advisory lock, a write transaction).
        """
        await self.execute(_SCHEMA_VERSION_TABLE)
        rows = await self.fetch(_CURRENT_VERSION)
        current = _schema_version(rows, len(migrations), self.display)
        for number in range(current + 1, len(migrations) + 1):
            statements: list[Statement] = [(sql, ()) for sql in migrations[number - 1]]
            statements.append(("INSERT INTO schema_version (version) VALUES (?)", (number,)))
            await self.batch(statements)
        return len(migrations)


_SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
_CURRENT_VERSION = "SELECT MAX(version) AS version FROM schema_version"


def _schema_version(rows: list[Row], known: int, display: str) -> int:
    current = int(rows[0]["version"] or 0) if rows else 0
    if current > known:
        raise LedgerError(
            f"the ledger at {display} has schema version {current}, newer than this "
            f"x402-aggregator understands ({known}); upgrade it"
        )
    return current


class SQLiteDatabase(Database):
    """One connection on one thread: statements never interleave, commits are fsynced (FULL).

    WAL lets readers (``ledger list`` from the CLI) run beside a serving process; several
    processes may share the file, serialised by ``BEGIN IMMEDIATE`` and the busy timeout.
    """

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.display = f"sqlite:///{path}"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="x402-ledger")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except (sqlite3.Error, OSError, OverflowError) as exc:
            raise LedgerError(f"ledger {self.display}: {exc}") from exc
        except RuntimeError as exc:  # the executor was shut down: this ledger is closed
            raise LedgerError(f"ledger {self.display} is closed") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._conn = conn
        return self._conn

    def _fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        return [dict(row) for row in self._connection().execute(sql, args).fetchall()]

    def _execute(self, sql: str, args: Sequence[Any]) -> int:
        return self._connection().execute(sql, args).rowcount

    def _batch(self, statements: Sequence[Statement]) -> list[int]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            counts = [conn.execute(sql, args).rowcount for sql, args in statements]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return counts

    def _migrate(self, migrations: Sequence[Sequence[str]]) -> int:
        # One write transaction from the version check to the last migration: processes that
        # start together on the same file take turns.
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SCHEMA_VERSION_TABLE)
            rows = [dict(row) for row in conn.execute(_CURRENT_VERSION).fetchall()]
            current = _schema_version(rows, len(migrations), self.display)
            for number in range(current + 1, len(migrations) + 1):
                for sql in migrations[number - 1]:
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return len(migrations)

    async def migrate(self, migrations: Sequence[Sequence[str]]) -> int:
        return await self._run(self._migrate, migrations)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._run(self._fetch, sql, args)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._run(self._execute, sql, args)

    async def batch(self, statements: Sequence[Statement]) -> list[int]:
        return await self._run(self._batch, statements)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)


class PostgresDatabase(Database):
    """An asyncpg pool; the unique primary key is what makes one claim win across instances."""

    dialect = "postgresql"

    def __init__(self, dsn: str, *, pool_size: int = 10) -> None:
        self._dsn = dsn
        parts = urlsplit(dsn)
        self.display = f"postgresql://{parts.hostname or ''}:{parts.port or 5432}{parts.path}"
        self._pool_size = pool_size
        self._pool: Any = None
        self._sql: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def _acquire_pool(self) -> Any:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    import asyncpg  # only deployments with PostgreSQL pay for the import

                    try:
                        self._pool = await asyncpg.create_pool(
                            self._dsn, min_size=1, max_size=self._pool_size, timeout=10
                        )
                    except (OSError, asyncpg.PostgresError) as exc:
                        raise LedgerError(
                            f"cannot connect to ledger {self.display}: {exc}"
                        ) from None
        return self._pool

    def _numbered(self, sql: str) -> str:
        converted = self._sql.get(sql)
        if converted is None:
            counter = iter(range(1, 10_000))
            converted = re.sub(r"\?", lambda _: f"${next(counter)}", sql)
            self._sql[sql] = converted
        return converted

    async def _call(self, method: str, sql: str, args: Sequence[Any]) -> Any:
        import asyncpg

        pool = await self._acquire_pool()
        try:
            return await getattr(pool, method)(self._numbered(sql), *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerError(f"ledger {self.display}: {exc}") from exc

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(row) for row in await self._call("fetch", sql, args)]

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._call("execute", sql, args))

    async def batch(self, statements: Sequence[Statement]) -> list[int]:
        import asyncpg

        pool = await self._acquire_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                return [
                    _rowcount(await conn.execute(self._numbered(sql), *args))
                    for sql, args in statements
                ]
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerError(f"ledger {self.display}: {exc}") from exc

    async def migrate(self, migrations: Sequence[Sequence[str]]) -> int:
        # Instances starting together must not both apply migration N.
        pool = await self._acquire_pool()
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                return await super().migrate(migrations)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _rowcount(status: str) -> int:
    """asyncpg answers ``UPDATE 3`` / ``INSERT 0 1``: the count is the last word."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def connect(url: str) -> Database:
    """A database for ``sqlite:///path``, ``sqlite:///:memory:`` or ``postgresql://…``."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise LedgerError(
                "a SQLite ledger URL looks like sqlite:///relative.db or sqlite:////abs.db"
            )
        return SQLiteDatabase(unquote(url[len("sqlite:///") :]) or ":memory:")
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url)
    raise LedgerError(f"unsupported ledger URL scheme {scheme!r}: use sqlite:/// or postgresql://")
