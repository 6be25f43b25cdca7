"""Faults on the real network: a facilitator dies, the chain stops mining."""

from __future__ import annotations

import time

from x402_aggregator.localnet.network import TestBed

from .conftest import AggregatorClient, wait_healthy

AMOUNT = 10_000


def test_payments_fail_over_when_the_primary_facilitator_dies(
    testbed: TestBed, through: AggregatorClient
) -> None:
    """After the primary is killed mid-run, the next payments verify and settle at the backup."""
    client = through("python", "typescript")
    first = testbed.payer.pay(testbed.pay_to, AMOUNT)
    assert client.post("/settle", json=first.body).headers["X-Aggregator-Upstream"] == "python"
    before = testbed.balances()

    testbed.kill("python")
    try:
        payments = [testbed.payer.pay(testbed.pay_to, AMOUNT) for _ in range(3)]
        verified = [client.post("/verify", json=p.body) for p in payments]
        settled = [client.post("/settle", json=p.body) for p in payments]
    finally:
        testbed.restart("python")

    assert all(v.json()["isValid"] for v in verified)
    assert all(s.json()["success"] for s in settled), [s.text for s in settled]
    assert {r.headers["X-Aggregator-Upstream"] for r in verified + settled} == {"typescript"}
    assert testbed.balances()["payer"] == before["payer"] - 3 * AMOUNT
    assert all(testbed.chain.authorization_used(p.payer, p.nonce) for p in payments)


def test_a_restarted_facilitator_serves_again(testbed: TestBed, through: AggregatorClient) -> None:
    """A facilitator restarted on its old port answers payments routed to it again."""
    client = through("python", "typescript")
    testbed.kill("python")
    testbed.restart("python")
    # Probes may have seen it down meanwhile: it is routed to again once they see it back up.
    wait_healthy(client, "python")
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT)

    settled = client.post("/settle", json=payment.body)

    assert settled.json()["success"] is True
    assert settled.headers["X-Aggregator-Upstream"] == "python"


def test_a_stalled_chain_gives_settlement_pending_then_the_same_transaction(
    testbed: TestBed, through: AggregatorClient
) -> None:
    """With mining stopped the caller sees settlement_pending with a hash, never a false answer."""
    client = through("python", "typescript")
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT)
    before = testbed.balances()

    testbed.chain.set_automine(False)
    try:
        pending = client.post("/settle", json=payment.body)
        assert testbed.balances() == before  # nothing mined yet
        testbed.chain.mine()
    finally:
        testbed.chain.set_automine(True)
    retried = client.post("/settle", json=payment.body)

    answer = pending.json()
    assert (answer["success"], answer["errorReason"]) == (False, "settlement_pending"), answer
    assert answer["transaction"].startswith("0x")
    assert pending.headers["X-Aggregator-Upstream"] == "python"
    assert retried.json()["success"] is True, retried.text
    assert retried.json()["transaction"] == answer["transaction"]
    assert testbed.balances()["payer"] == before["payer"] - AMOUNT


def test_a_killed_facilitator_comes_back_into_rotation(
    testbed: TestBed, through: AggregatorClient
) -> None:
    """Killed, traffic moves to the backup; restarted, the same aggregator routes to it again."""
    client = through("python", "typescript")
    testbed.kill("python")
    try:
        during = testbed.payer.pay(testbed.pay_to, AMOUNT)
        moved = client.post("/settle", json=during.body)
    finally:
        testbed.restart("python")
    restarted = time.monotonic()

    while True:
        payment = testbed.payer.pay(testbed.pay_to, AMOUNT)
        response = client.post("/verify", json=payment.body)
        if response.headers["X-Aggregator-Upstream"] == "python":
            break
        assert time.monotonic() - restarted < 15, client.get("/status").json()
        time.sleep(0.2)
    settled = client.post("/settle", json=payment.body)

    assert moved.headers["X-Aggregator-Upstream"] == "typescript"
    assert moved.json()["success"] is True
    assert settled.headers["X-Aggregator-Upstream"] == "python"
    assert settled.json()["success"] is True
    assert testbed.chain.authorization_used(payment.payer, payment.nonce)
