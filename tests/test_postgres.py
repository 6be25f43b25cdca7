"""Tests of the throwaway PostgreSQL server, against the real server binaries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.postgres import PostgresServer, postgres_bin_dir

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once pid no longer exists or is a zombie (the exited postmaster awaiting its reaper)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in status:
            return True
        time.sleep(0.05)
    return False


def test_bin_dir_has_the_server_binaries() -> None:
    """postgres_bin_dir() finds initdb, pg_ctl and postgres together."""
    bin_dir = postgres_bin_dir()
    for name in ("initdb", "pg_ctl", "postgres"):
        assert (bin_dir / name).is_file()


async def test_create_insert_select(pg: PostgresServer) -> None:
    """The DSN connects as x402 to database x402, over TCP on 127.0.0.1, and data round-trips."""
    assert pg.dsn == f"postgresql://x402@127.0.0.1:{pg.port}/x402"
    conn = await asyncpg.connect(pg.dsn, timeout=10)
    try:
        assert await conn.fetchval("SELECT current_user") == "x402"
        assert await conn.fetchval("SELECT current_database()") == "x402"
        assert await conn.fetchval("SELECT inet_server_addr()::text") == "127.0.0.1/32"
        await conn.execute("CREATE TABLE payments (id serial PRIMARY KEY, payer text NOT NULL)")
        await conn.executemany("INSERT INTO payments (payer) VALUES ($1)", [("0xa",), ("0xb",)])
        rows = await conn.fetch("SELECT id, payer FROM payments ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "0xa"), (2, "0xb")]
    finally:
        await conn.close()


async def test_server_settings(pg: PostgresServer) -> None:
    """Listens on 127.0.0.1 only, socket in the temp dir, durability defaults kept."""
    conn = await asyncpg.connect(pg.dsn, timeout=10)
    try:
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SHOW unix_socket_directories") == str(pg.data_dir.parent)
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        hba = await conn.fetch("SELECT type, address, auth_method FROM pg_hba_file_rules")
        assert [tuple(r) for r in hba] == [("host", "127.0.0.1", "trust")]
    finally:
        await conn.close()


async def test_new_database_is_isolated(pg: PostgresServer) -> None:
    """Each new_database() is a fresh, empty database: a table in A is not visible in B."""
    dsn_a = pg.new_database()
    dsn_b = pg.new_database()
    assert dsn_a != dsn_b
    a = await asyncpg.connect(dsn_a, timeout=10)
    b = await asyncpg.connect(dsn_b, timeout=10)
    try:
        await a.execute("CREATE TABLE only_in_a (x int)")
        await a.execute("INSERT INTO only_in_a VALUES (42)")
        assert await a.fetchval("SELECT x FROM only_in_a") == 42
        assert await b.fetchval("SELECT to_regclass('only_in_a')") is None
        with pytest.raises(asyncpg.UndefinedTableError):
            await b.fetchval("SELECT x FROM only_in_a")
    finally:
        await a.close()
        await b.close()


async def test_new_database_with_a_name(pg: PostgresServer) -> None:
    """A given name is used as is; names that are not plain identifiers are refused."""
    dsn = pg.new_database("named_db")
    assert dsn == f"postgresql://x402@127.0.0.1:{pg.port}/named_db"
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        assert await conn.fetchval("SELECT current_database()") == "named_db"
    finally:
        await conn.close()
    with pytest.raises(ValueError, match="database name"):
        pg.new_database('x"; DROP DATABASE x402; --')
    with pytest.raises(RuntimeError, match="already exists"):
        pg.new_database("named_db")


async def test_stop_kills_the_server_and_is_idempotent() -> None:
    """After stop() connecting fails, no postmaster is left, the temp dir is gone; stop() twice."""
    server = PostgresServer().start()
    dsn, tmp, pid = server.dsn, server.data_dir.parent, postmaster_pid(server)
    conn = await asyncpg.connect(dsn, timeout=10)
    assert await conn.fetchval("SELECT 1") == 1
    server.stop()
    assert process_gone(pid)
    assert not tmp.exists()
    # The open connection is dead (how it is reported depends on when asyncpg notices).
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(dsn, timeout=5)
    server.stop()
    with pytest.raises(RuntimeError, match="not running"):
        server.new_database()


def test_context_manager_stops_on_error() -> None:
    """Leaving the with block by an exception still stops the server and removes the temp dir."""
    with pytest.raises(KeyError), PostgresServer() as server:  # noqa: PT012
        tmp, pid = server.data_dir.parent, postmaster_pid(server)
        raise KeyError("boom")
    assert process_gone(pid)
    assert not tmp.exists()


def test_start_failure_reports_the_log_and_cleans_up() -> None:
    """A server that cannot start raises RuntimeError with the log's tail; nothing is left."""
    server = PostgresServer(settings={"shared_buffers": "not-a-size"})
    with pytest.raises(RuntimeError, match="shared_buffers") as info:
        server.start()
    assert "tail of" in str(info.value)
    assert server._tmp is None
    server.stop()
