"""Real payments through the aggregator: both SDKs' facilitators, a real chain, real USDC.

Every test checks the chain (balances, the token's authorization state), not just the JSON.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from x402_aggregator.localnet.network import TestBed

from .conftest import AggregatorClient

AMOUNT = 10_000  # 0.01 USDC


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("primary", ["python", "typescript"])
def test_payment_verifies_and_settles_moving_exactly_the_amount(
    testbed: TestBed, through: AggregatorClient, primary: str, version: int
) -> None:
    """A signed payment verifies, settles once, and moves exactly its amount from payer to payee."""
    others = [name for name in testbed.facilitators if name != primary]
    client = through(primary, *others)
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT, version=version)
    before = testbed.balances()

    verified = client.post("/verify", json=payment.body)
    settled = client.post("/settle", json=payment.body)

    assert verified.json()["isValid"] is True, verified.text
    assert verified.headers["X-Aggregator-Upstream"] == primary
    answer = settled.json()
    assert answer["success"] is True, settled.text
    assert answer["transaction"].startswith("0x")
    assert answer["network"] == payment.body["paymentRequirements"]["network"]
    assert settled.headers["X-Aggregator-Upstream"] == primary
    after = testbed.balances()
    assert after["payer"] == before["payer"] - AMOUNT
    assert after["pay_to"] == before["pay_to"] + AMOUNT
    assert testbed.chain.authorization_used(payment.payer, payment.nonce)


@pytest.mark.parametrize("primary", ["python", "typescript"])
def test_a_replayed_settle_never_moves_money_twice(
    testbed: TestBed, through: AggregatorClient, primary: str
) -> None:
    """Settling the same signed payment again fails and leaves balances as after the first."""
    others = [name for name in testbed.facilitators if name != primary]
    client = through(primary, *others)
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT)
    first = client.post("/settle", json=payment.body).json()
    after_first = testbed.balances()

    second = client.post("/settle", json=payment.body).json()

    assert first["success"] is True
    assert second["success"] is False
    assert testbed.balances() == after_first


@pytest.mark.parametrize(
    ("fault", "reasons"),
    [
        ("value", {"invalid_exact_evm_payload_authorization_value_mismatch"}),
        ("signer", {"invalid_exact_evm_payload_signature", "invalid_exact_evm_signature"}),
        ("expired", {"invalid_exact_evm_payload_authorization_valid_before"}),
    ],
)
@pytest.mark.parametrize("primary", ["python", "typescript"])
def test_bad_payments_are_rejected_with_the_facilitators_reason(
    testbed: TestBed, through: AggregatorClient, primary: str, fault: str, reasons: set[str]
) -> None:
    """Wrong amount, foreign signature and expiry are rejected with the reason passed through."""
    others = [name for name in testbed.facilitators if name != primary]
    client = through(primary, *others)
    faults = {
        "value": {"value": AMOUNT - 1},
        "signer": {"signer": testbed.stranger},
        "expired": {"valid_for_s": 3},
    }
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT, **faults[fault])  # type: ignore[arg-type]
    before = testbed.balances()

    verified = client.post("/verify", json=payment.body)
    settled = client.post("/settle", json=payment.body)

    assert verified.status_code == settled.status_code == 200
    assert verified.json()["isValid"] is False
    assert verified.json()["invalidReason"] in reasons
    assert settled.json()["success"] is False
    assert settled.json()["errorReason"] in reasons
    assert verified.headers["X-Aggregator-Upstream"] == primary
    assert testbed.balances() == before
    assert not testbed.chain.authorization_used(payment.payer, payment.nonce)


def test_sixteen_concurrent_payments_all_land_once(
    testbed: TestBed, through: AggregatorClient
) -> None:
    """16 distinct payments settled at once through the aggregator each land exactly once."""
    client = through("typescript", "python")
    payments = [testbed.payer.pay(testbed.pay_to, AMOUNT) for _ in range(16)]
    before = testbed.balances()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: client.post("/settle", json=p.body).json(), payments))

    assert [a["success"] for a in answers] == [True] * 16, answers
    assert len({a["transaction"] for a in answers}) == 16
    after = testbed.balances()
    assert after["payer"] == before["payer"] - 16 * AMOUNT
    assert after["pay_to"] == before["pay_to"] + 16 * AMOUNT
    assert all(testbed.chain.authorization_used(p.payer, p.nonce) for p in payments)
