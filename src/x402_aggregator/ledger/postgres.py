"""The PostgreSQL driver: one ledger shared by several instances behind a load balancer.

asyncpg is imported on first use, so deployments on SQLite never load it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..errors import LedgerError
from .base import Database, Row, Statement

#: Advisory lock key (PostgreSQL) that serialises migrations between instances starting at once.
_MIGRATION_LOCK = 0x402_402


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
