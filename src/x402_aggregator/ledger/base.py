"""What a ledger database must do, and the schema versioning both drivers share.

The drivers (:mod:`.sqlite`, :mod:`.postgres`) subclass :class:`Database`, so this module imports
neither: :mod:`.database` picks one from a URL. SQL is written once, with ``?`` placeholders and
the subset both dialects share (``ON CONFLICT``, ``excluded.``, ``COALESCE``); the PostgreSQL
driver numbers the placeholders. Decisions that need a read and a write are made with optimistic
conditional updates (``WHERE version = ?``), which hold across processes on both without
dialect-specific locking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ..errors import LedgerError

Row = dict[str, Any]
Statement = tuple[str, Sequence[Any]]


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
        await self.execute(SCHEMA_VERSION_TABLE)
        rows = await self.fetch(CURRENT_VERSION)
        current = schema_version(rows, len(migrations), self.display)
        for number in range(current + 1, len(migrations) + 1):
            statements: list[Statement] = [(sql, ()) for sql in migrations[number - 1]]
            statements.append(("INSERT INTO schema_version (version) VALUES (?)", (number,)))
            await self.batch(statements)
        return len(migrations)


SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
CURRENT_VERSION = "SELECT MAX(version) AS version FROM schema_version"


def schema_version(rows: list[Row], known: int, display: str) -> int:
    """The version ``CURRENT_VERSION`` read; a :class:`LedgerError` if newer than ``known``."""
    current = int(rows[0]["version"] or 0) if rows else 0
    if current > known:
        raise LedgerError(
            f"the ledger at {display} has schema version {current}, newer than this "
            f"x402-aggregator understands ({known}); upgrade it"
        )
    return current
