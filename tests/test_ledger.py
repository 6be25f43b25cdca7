"""The ledger's store on real SQLite files and a real PostgreSQL server: same behaviour on both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.postgres import PostgresServer
from x402_aggregator.ledger import AttemptEnd, Ledger, LedgerError, Payment
from x402_aggregator.ledger.schema import MIGRATIONS
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.protocol import parse_request

Opener = Callable[..., Awaitable[Ledger]]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
async def ledgers(url: str) -> AsyncIterator[Opener]:
    """Open ledgers on one database, as separate aggregator instances would."""
    opened: list[Ledger] = []

    async def _open(**kwargs: float) -> Ledger:
        ledger = Ledger.from_url(url, **kwargs)
        await ledger.open(heartbeat=False)
        opened.append(ledger)
        return ledger

    yield _open
    for ledger in opened:
        await ledger.aclose()


def payment(valid_for_s: int = 300, **overrides: Any) -> Payment:
    body = orjson.dumps(v2_body(valid_before=int(time.time()) + valid_for_s, **overrides))
    return Payment.of(parse_request(body, "settle"))


async def test_one_claim_wins_and_the_rest_see_it_busy_then_settled(ledgers: Opener) -> None:
    a, b = await ledgers(), await ledgers()
    p = payment()

    # As the settler marks what it works on: one mark per task (two tasks on a, one on b).
    with a.working(p.id), a.working(p.id), b.working(p.id):
        claims = await asyncio.gather(a.claim(p), b.claim(p), a.claim(p))

    assert sorted(c.status for c in claims) == ["busy", "busy", "fresh"]
    winner = next(c for c in claims if c.status == "fresh")
    owner = a if winner.record.owner == a.instance else b
    await owner.begin_attempt(winner.record, 1, "settle", "primary")
    await owner.finish(
        winner.record,
        "settled",
        transaction="0xabc",
        response=b'{"success":true,"transaction":"0xabc"}',
        reported=True,
        attempt=AttemptEnd(1, "ok", 200, "0xabc"),
    )
    after = await b.claim(p)
    assert after.status == "settled"
    assert after.record.transaction == "0xabc"
    assert [(x.upstream, x.outcome, x.transaction) for x in after.record.attempts] == [
        ("primary", "ok", "0xabc")
    ]


async def test_a_definitive_failure_is_claimed_afresh(ledgers: Opener) -> None:
    ledger = await ledgers()
    p = payment()
    first = await ledger.claim(p)
    await ledger.finish(first.record, "failed", response=b"{}")

    again = await ledger.claim(p)

    assert (again.status, again.previous) == ("fresh", "failed")
    assert again.record.version == first.record.version + 1


async def test_an_ambiguous_payment_is_resumed_with_its_upstream(ledgers: Opener) -> None:
    ledger = await ledgers()
    p = payment()
    claim = await ledger.claim(p)
    await ledger.begin_attempt(claim.record, 1, "settle", "backup-never-reached")
    await ledger.end_attempt(claim.record, AttemptEnd(1, "retryable", error="refused"))
    await ledger.begin_attempt(claim.record, 2, "settle", "primary")
    await ledger.finish(claim.record, "ambiguous", attempt=AttemptEnd(2, "ambiguous"))

    resumed = await ledger.claim(p)

    assert (resumed.status, resumed.previous) == ("resume", "ambiguous")
    assert resumed.record.sticky == "primary"
    assert resumed.record.attempt_count == 2


async def test_a_dead_owners_pending_claim_is_taken_over_and_fenced(ledgers: Opener) -> None:
    """An instance that stopped beating loses its claim; its late writes change nothing."""
    dead, alive = await ledgers(instance_timeout_s=5), await ledgers(instance_timeout_s=5)
    p = payment()
    claim = await dead.claim(p)
    await dead.begin_attempt(claim.record, 1, "settle", "primary")  # sent, then "crashed"
    assert (await alive.claim(p)).status == "busy"
    await alive.db.execute(
        "UPDATE instances SET heartbeat_at = ? WHERE id = ?", time.time() - 60, dead.instance
    )

    taken = await alive.claim(p)
    late = await dead.finish(claim.record, "settled", transaction="0xlate", reported=True)

    assert (taken.status, taken.previous, taken.record.sticky) == ("resume", "pending", "primary")
    assert late is False
    record = await alive.get(p.id)
    assert record is not None
    assert record.state == "pending"
    assert record.transaction is None
    with pytest.raises(LedgerError):
        await dead.begin_attempt(claim.record, 2, "settle", "backup")


async def test_a_pending_claim_left_before_sending_is_fresh(ledgers: Opener) -> None:
    dead, alive = await ledgers(instance_timeout_s=5), await ledgers(instance_timeout_s=5)
    p = payment()
    await dead.claim(p)
    await alive.db.execute("DELETE FROM instances WHERE id = ?", dead.instance)

    taken = await alive.claim(p)

    assert (taken.status, taken.previous) == ("fresh", "pending")


async def test_a_success_is_reported_once_across_instances(ledgers: Opener) -> None:
    a, b = await ledgers(), await ledgers()
    p = payment()
    claim = await a.claim(p)
    await a.finish(claim.record, "settled", transaction="0x1", response=b"{}", reported=False)

    marks = await asyncio.gather(*(x.mark_reported(p.id) for x in (a, b, a, b)))

    assert sorted(marks) == [False, False, False, True]


async def test_records_are_kept_until_valid_before_plus_the_margin(ledgers: Opener) -> None:
    ledger = await ledgers(retention_margin_s=0)
    expired, current, in_flight = payment(valid_for_s=-5), payment(), payment(valid_for_s=-5)
    for p in (expired, current):
        claim = await ledger.claim(p)
        await ledger.finish(claim.record, "settled", transaction="0x1", response=b"{}")
    await ledger.claim(in_flight)

    assert await ledger.purge() == 1

    assert await ledger.get(expired.id) is None
    assert await ledger.get(current.id) is not None
    assert await ledger.get(in_flight.id) is not None  # never purged while someone owns it


async def test_idempotency_keys_keep_the_response_and_body_hash(ledgers: Opener) -> None:
    ledger = await ledgers()
    await ledger.remember_response("k1", "pay-1", "hash-1", 200, b'{"success":true}', None)
    await ledger.remember_response("k1", "pay-2", "hash-2", 200, b"{}", None)  # first one stays

    stored = await ledger.idempotent_response("k1")

    assert stored is not None
    assert (stored.settlement_id, stored.request_hash, stored.body) == (
        "pay-1",
        "hash-1",
        b'{"success":true}',
    )
    assert await ledger.idempotent_response("k2") is None


async def test_damaged_rows_read_as_ambiguous_and_never_crash(ledgers: Opener) -> None:
    ledger = await ledgers()
    await ledger.db.execute(
        "INSERT INTO settlements (id, state, version, network, scheme, x402_version,"
        " payload_hash, request, created_at, updated_at, expires_at)"
        " VALUES ('bad', 'exploded', 1, '', '', 0, '', 'not json', 0, 0, ?)",
        time.time() + 3600,
    )

    record = await ledger.get("bad")
    due = await ledger.due()

    assert record is not None
    assert record.state == "ambiguous"
    assert record.note is not None
    assert "exploded" in record.note
    assert [r.id for r in due] == ["bad"]


async def test_migrations_are_idempotent_and_a_newer_schema_is_refused(
    ledgers: Opener, url: str
) -> None:
    ledger = await ledgers()
    assert await ledger.db.migrate(MIGRATIONS) == len(MIGRATIONS)
    await ledger.db.execute("INSERT INTO schema_version (version) VALUES (99)")

    newer = Ledger.from_url(url)
    try:
        with pytest.raises(LedgerError, match="schema version 99"):
            await newer.open(heartbeat=False)
    finally:
        await newer.aclose()


async def test_an_unreachable_database_is_a_ledger_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    ledger = Ledger.from_url(f"sqlite:///{blocked}/ledger.db")  # a file where a dir must be
    try:
        with pytest.raises(LedgerError):
            await ledger.open(heartbeat=False)
    finally:
        await ledger.aclose()


async def test_postgres_errors_never_show_the_password(postgres: PostgresServer) -> None:
    ledger = Ledger.from_url("postgresql://x402:s3cret@127.0.0.1:1/none")
    try:
        with pytest.raises(LedgerError) as caught:
            await ledger.open(heartbeat=False)
    finally:
        await ledger.aclose()
    assert "s3cret" not in str(caught.value)
    assert ledger.db.display == "postgresql://127.0.0.1:1/none"  # what /status shows
