"""One settle per payment: duplicates, retries after ambiguity, cancelled callers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from tests.postgres import PostgresServer
from x402_aggregator import Aggregator, load_config
from x402_aggregator.ledger import Ledger
from x402_aggregator.localnet.fake_facilitator import FakeFacilitator, Mode
from x402_aggregator.localnet.payloads import v2_body

from .conftest import AggregatorFactory, FakeFactory, Running, upstream_entry


def test_concurrent_duplicates_cause_one_upstream_settle(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Ten copies of one payment at once: one upstream call, one success, nine duplicates."""
    primary = fakes("primary", latency_s=0.2)
    agg = aggregator(primary, fakes("backup"))
    body = v2_body()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: agg.post("/settle", body).json(), range(10)))

    assert primary.calls["settle"] == 1
    successes = [a for a in answers if a["success"]]
    duplicates = [a for a in answers if a.get("errorReason") == "duplicate_settlement"]
    assert len(successes) == 1
    assert len(duplicates) == 9
    assert {d["transaction"] for d in duplicates} == {successes[0]["transaction"]}


def test_a_settled_payment_is_never_settled_again(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A re-presented payment gets duplicate_settlement with the original transaction."""
    primary = fakes("primary")
    agg = aggregator(primary)
    body = v2_body()

    first = agg.post("/settle", body).json()
    again = agg.post("/settle", body)

    assert again.status_code == 200
    assert again.json()["errorReason"] == "duplicate_settlement"
    assert again.json()["transaction"] == first["transaction"]
    assert again.headers["X-Aggregator-Upstream"] == "primary"
    assert primary.calls["settle"] == 1


def test_a_retry_after_an_unknown_outcome_stays_with_the_same_upstream(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """After a settle that may have landed, retries go only to that upstream, whatever happens."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    body = v2_body()
    primary.set("settle", Mode.HTTP500)
    first = agg.post("/settle", body).json()

    primary.stop()  # unreachable now: the backup must still not be asked
    while_down = agg.post("/settle", body).json()
    primary.start()
    primary.set("settle", Mode.INVALID, reason="invalid_exact_evm_nonce_already_used")
    refused = agg.post("/settle", body).json()  # "already used" may mean *our* first attempt won
    primary.set("settle", Mode.OK)
    confirmed = agg.post("/settle", body).json()

    assert first["errorReason"] == "settlement_outcome_unknown"
    assert while_down["errorReason"] == "settlement_outcome_unknown"
    assert refused["errorReason"] == "settlement_outcome_unknown"
    assert confirmed["success"] is True
    assert backup.calls["settle"] == 0


def test_a_definitive_failure_lets_the_payment_be_tried_afresh(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A rejection before anything moved (e.g. insufficient funds) does not block a later retry."""
    primary = fakes("primary")
    agg = aggregator(primary)
    body = v2_body()
    primary.set("settle", Mode.INVALID, reason="invalid_exact_evm_insufficient_balance")

    rejected = agg.post("/settle", body).json()
    primary.set("settle", Mode.OK)
    retried = agg.post("/settle", body).json()

    assert rejected["errorReason"] == "invalid_exact_evm_insufficient_balance"
    assert retried["success"] is True


async def test_a_cancelled_caller_does_not_cut_a_settle_short(fakes: FakeFactory) -> None:
    """If the caller gives up mid-settle, the settle still finishes and is remembered."""
    primary = fakes("primary")
    primary.set("settle", Mode.SLOW, delay_s=0.3)
    engine = Aggregator(load_config({"upstreams": [{"name": "primary", "url": primary.url}]}))
    await engine.start()
    body = orjson.dumps(v2_body())
    try:
        caller = asyncio.create_task(engine.settle(body))
        await asyncio.sleep(0.1)
        caller.cancel()
        await asyncio.sleep(0.5)
        again = (await engine.settle(body)).json()
    finally:
        await engine.aclose()

    assert primary.calls["settle"] == 1
    assert again["errorReason"] == "duplicate_settlement"
    assert again["transaction"].startswith("0x")


@pytest.fixture(autouse=True, params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every behaviour here holds on both ledgers: a SQLite file and a real PostgreSQL."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        monkeypatch.setenv("X402_AGGREGATOR_LEDGER__URL", server.new_database())
    return os.environ["X402_AGGREGATOR_LEDGER__URL"]


def settlement_of(agg: Running, response: httpx.Response) -> dict[str, Any]:
    """The ledger record of a settle, looked up by its X402-Settlement-Id header."""
    key = quote(response.headers["X402-Settlement-Id"], safe="")
    found = agg.client.get(f"/settlements/{key}")
    assert found.status_code == 200, found.text
    record: dict[str, Any] = found.json()
    return record


def wait_for_state(agg: Running, response: httpx.Response, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = settlement_of(agg, response)
        if record["state"] == state:
            return record
        time.sleep(0.05)
    raise AssertionError(f"still {record['state']}, not {state}: {record}")


def test_a_payment_settled_before_a_restart_is_a_duplicate_after_it(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """The ledger is on disk: a new process knows what the previous one settled."""
    primary = fakes("primary")
    body = v2_body()
    before = aggregator(primary)
    first = before.post("/settle", body).json()
    before.server.stop()

    after = aggregator(primary, fakes("backup"))
    again = after.post("/settle", body).json()

    assert first["success"] is True
    assert again["errorReason"] == "duplicate_settlement"
    assert again["transaction"] == first["transaction"]
    assert primary.calls["settle"] == 1


def test_a_hung_primary_without_rpc_is_unknown_then_resolved_by_the_same_upstream(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """No RPC: outcome unknown, backup untouched; the resolver asks the primary again later."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup, ledger={"resolve_interval_s": 0.2})
    primary.set("settle", Mode.HANG, times=1)
    body = v2_body()

    unknown = agg.post("/settle", body)
    ambiguous = settlement_of(agg, unknown)
    settled = wait_for_state(agg, unknown, "settled")
    told = agg.post("/settle", body).json()
    again = agg.post("/settle", body).json()

    assert unknown.json()["errorReason"] == "settlement_outcome_unknown"
    assert unknown.json()["network"] == "eip155:84532"
    assert ambiguous["state"] == "ambiguous"
    assert [(a["upstream"], a["outcome"]) for a in ambiguous["attempts"]] == [
        ("primary", "ambiguous")
    ]
    assert "request" not in ambiguous  # the signed payment itself is never exposed
    assert settled["reported"] is False  # resolved in the background: nobody was told yet
    assert told["success"] is True
    assert told["transaction"] == settled["transaction"]
    assert again["errorReason"] == "duplicate_settlement"
    assert again["transaction"] == settled["transaction"]
    assert backup.calls["settle"] == 0
    assert primary.calls["settle"] == 2


@pytest.mark.parametrize("reason", ["invalid_exact_evm_nonce_already_used", "transaction_failed"])
def test_a_refusal_after_an_ambiguous_attempt_is_never_reported_as_failure(
    fakes: FakeFactory, aggregator: AggregatorFactory, reason: str
) -> None:
    """A replay answered 'already used' or 'reverted tx' may mean our first attempt won."""
    primary = fakes("primary")
    agg = aggregator(primary, fakes("backup"), ledger={"resolve_interval_s": 60})
    body = v2_body()
    primary.set("settle", Mode.RESET, times=1)
    first = agg.post("/settle", body)
    primary.set("settle", Mode.INVALID, reason=reason)

    replay = agg.post("/settle", body)

    assert first.json()["errorReason"] == "settlement_outcome_unknown"
    assert replay.json()["errorReason"] == "settlement_outcome_unknown"
    assert settlement_of(agg, replay)["state"] == "ambiguous"


def test_settlement_pending_is_sticky_until_the_same_upstream_confirms(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup, ledger={"resolve_interval_s": 60})
    primary.set("settle", Mode.PENDING, times=1)
    body = v2_body()

    pending = agg.post("/settle", body)
    record = settlement_of(agg, pending)
    confirmed = agg.post("/settle", body).json()

    assert pending.json()["errorReason"] == "settlement_pending"
    assert pending.json()["transaction"].startswith("0x")
    assert pending.json()["network"] == "eip155:84532"
    assert (record["state"], record["transaction"]) == (
        "pending_onchain",
        pending.json()["transaction"],
    )
    assert confirmed["success"] is True
    assert confirmed["transaction"] == pending.json()["transaction"]
    assert backup.calls["settle"] == 0


def test_an_idempotency_key_replays_the_recorded_answer(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Stripe semantics: same key and body, same answer (even a success); another body, 422."""
    primary = fakes("primary")
    agg = aggregator(primary)
    body = v2_body()
    headers = {"Idempotency-Key": "order-42"}

    first = agg.client.post("/settle", json=body, headers=headers)
    replayed = agg.client.post("/settle", json=body, headers=headers)
    plain = agg.post("/settle", body)
    other = agg.client.post("/settle", json=v2_body(), headers=headers)

    assert first.json()["success"] is True
    assert "Idempotent-Replayed" not in first.headers
    assert replayed.json() == first.json()
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert plain.json()["errorReason"] == "duplicate_settlement"  # no key: reported once
    assert other.status_code == 422
    assert other.json()["success"] is False
    assert other.json()["errorReason"] == "idempotency_key_reused"
    assert primary.calls["settle"] == 1


def test_the_payment_identifier_extension_is_an_idempotency_key(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    primary = fakes("primary")
    agg = aggregator(primary)
    body = v2_body(
        extensions={"payment-identifier": {"info": {"id": "pay_123", "required": False}}}
    )

    first = agg.post("/settle", body).json()
    again = agg.post("/settle", body)

    assert first["success"] is True
    assert again.json() == first
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize("key", ["", "x" * 256, "spaces are not allowed"])
def test_a_malformed_idempotency_key_is_a_clear_400(
    fakes: FakeFactory, aggregator: AggregatorFactory, key: str
) -> None:
    primary = fakes("primary")
    agg = aggregator(primary)

    answer = agg.client.post("/settle", json=v2_body(), headers={"Idempotency-Key": key})

    assert answer.status_code == 400
    assert answer.json()["errorReason"] == "invalid_payload"
    assert primary.calls["settle"] == 0


def test_when_the_ledger_goes_down_settles_are_refused_before_sending(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle that cannot be written ahead is refused (503) before any upstream sees it."""
    primary = fakes("primary")
    with PostgresServer() as database:
        monkeypatch.setenv("X402_AGGREGATOR_LEDGER__URL", database.new_database())
        agg = aggregator(primary)
        assert agg.post("/settle", v2_body()).json()["success"] is True
        database.stop()

        answer = agg.post("/settle", v2_body())
        verify = agg.post("/verify", v2_body())
        listing = agg.client.get("/settlements")

    assert answer.status_code == 503
    assert answer.json()["errorReason"] == "ledger_unavailable"
    assert verify.json()["isValid"] is True  # verify needs no ledger
    assert listing.status_code == 503
    assert primary.calls["settle"] == 1


def test_settlement_records_are_listed_and_looked_up(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    primary = fakes("primary")
    agg = aggregator(primary)
    settled = agg.post("/settle", v2_body())
    primary.set("settle", Mode.INVALID, reason="invalid_exact_evm_insufficient_balance")
    failed = agg.post("/settle", v2_body())
    tx = settled.json()["transaction"]

    everything = agg.client.get("/settlements").json()["settlements"]
    by_state = agg.client.get("/settlements", params={"state": "failed"}).json()["settlements"]
    by_tx = agg.client.get("/settlements", params={"transaction": tx}).json()["settlements"]

    assert [r["state"] for r in everything] == ["failed", "settled"]
    assert [r["id"] for r in by_state] == [failed.headers["X402-Settlement-Id"]]
    assert [r["id"] for r in by_tx] == [settled.headers["X402-Settlement-Id"]]
    assert agg.client.get("/settlements/nothing-here").status_code == 404
    assert agg.client.get("/settlements", params={"state": "bogus"}).status_code == 400
    assert agg.client.get("/settlements", params={"limit": "0"}).status_code == 400


def test_damaged_records_never_stop_the_service(
    fakes: FakeFactory, aggregator: AggregatorFactory, backend: str
) -> None:
    """Garbage in the ledger is shown as ambiguous and left alone; the service starts and works."""

    async def damage() -> None:
        ledger = Ledger.from_url(backend)
        await ledger.open(heartbeat=False)
        for state, request in (("exploded", "{}"), ("pending", "not json"), ("ambiguous", "[]")):
            await ledger.db.execute(
                "INSERT INTO settlements (id, state, version, owner, network, scheme,"
                " x402_version, payload_hash, request, created_at, updated_at, expires_at)"
                " VALUES (?, ?, 1, 'gone', '', '', 2, '', ?, 0, 0, ?)",
                f"bad-{state}",
                state,
                request,
                time.time() + 3600,
            )
        await ledger.aclose()

    asyncio.run(damage())
    primary = fakes("primary")
    agg = aggregator(primary, ledger={"resolve_interval_s": 0.1})
    time.sleep(0.3)  # a few resolver passes over the damaged rows

    answer = agg.post("/settle", v2_body()).json()
    listed = agg.client.get("/settlements").json()["settlements"]

    assert agg.client.get("/healthz").status_code == 200
    assert answer["success"] is True
    assert {r["id"]: r["state"] for r in listed if r["id"].startswith("bad-")} == {
        "bad-exploded": "ambiguous",
        "bad-pending": "pending",
        "bad-ambiguous": "ambiguous",
    }


def _engine(primary: FakeFacilitator) -> Aggregator:
    entry = upstream_entry(primary, 0, settle_timeout_s=5.0, timeout_s=5.0)
    return Aggregator(load_config({"upstreams": [entry], "health": {"startup_wait_s": 2.0}}))


def test_an_owner_taken_over_while_sending_never_reports_a_second_success(
    fakes: FakeFactory,
) -> None:
    """A looks dead (stale heartbeat) mid-settle; B takes the payment over and settles it.

    A's late success from its upstream is not reported: its claim is gone, so the ledger
    decides what A's caller hears (the success was already reported to B's).
    """
    primary = fakes("primary", latency_s=1.0)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        a, b = _engine(primary), _engine(primary)
        await a.start()
        await b.start()
        body = orjson.dumps(v2_body())
        try:
            first = asyncio.create_task(a.settle(body))
            await asyncio.sleep(0.3)  # A has sent; now it stops beating and looks dead
            assert a.ledger._heartbeat is not None
            a.ledger._heartbeat.cancel()
            await a.ledger.db.execute(
                "UPDATE instances SET heartbeat_at = 0 WHERE id = ?", a.ledger.instance
            )
            second = await b.settle(body)
            return (await first).json(), second.json()
        finally:
            await a.aclose()
            await b.aclose()

    one, two = asyncio.run(main())

    assert [one.get("success"), two.get("success")].count(True) == 1, (one, two)
    loser = one if two.get("success") else two
    # Told what the ledger knew at that moment: B still settling, or B's success already told.
    assert loser["errorReason"] in ("settlement_outcome_unknown", "duplicate_settlement")


def test_a_valid_before_beyond_64_bits_still_settles(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """validBefore is a uint256: one that no database integer holds is kept out of the index."""
    primary = fakes("primary")
    agg = aggregator(primary)

    answer = agg.post("/settle", v2_body(valid_before=2**70))

    assert answer.status_code == 200
    assert answer.json()["success"] is True
    assert settlement_of(agg, answer)["valid_before"] is None


async def test_a_ledger_down_at_first_use_is_opened_again_later(
    fakes: FakeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process use opens the ledger on first settle; a failure then is not for good."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("X402_AGGREGATOR_LEDGER__URL", f"sqlite:///{blocker}/ledger.db")
    primary = fakes("primary")
    engine = _engine(primary)
    try:
        down = await engine.settle(orjson.dumps(v2_body()))
        blocker.unlink()  # the "database" comes back
        up = await engine.settle(orjson.dumps(v2_body()))
    finally:
        await engine.aclose()

    assert (down.status, down.json()["errorReason"]) == (503, "ledger_unavailable")
    assert up.json()["success"] is True
    assert primary.calls["settle"] == 1
