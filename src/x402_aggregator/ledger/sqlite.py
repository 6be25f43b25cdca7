"""The SQLite driver: the default ledger, one file beside the service, no server to run.

SQLite's calls block, so they run on one thread of their own, which also keeps one connection's
statements from interleaving.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import LedgerError
from .base import CURRENT_VERSION, SCHEMA_VERSION_TABLE, Database, Row, Statement, schema_version

T = TypeVar("T")


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
            conn.execute(SCHEMA_VERSION_TABLE)
            rows = [dict(row) for row in conn.execute(CURRENT_VERSION).fetchall()]
            current = schema_version(rows, len(migrations), self.display)
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
