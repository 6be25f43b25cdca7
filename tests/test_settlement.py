"""One settle per payment: duplicates, retries after ambiguity, cancelled callers."""

from __future__ import annotations

import asyncio
import concurrent.futures

import orjson

from x402_aggregator import Aggregator, load_config
from x402_aggregator.testing.fake_facilitator import Mode
from x402_aggregator.testing.payloads import v2_body

from .conftest import AggregatorFactory, FakeFactory


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
