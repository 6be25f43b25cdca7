"""Solana ``exact`` payments through the aggregator on a local Solana VM, both SDKs' facilitators.

A Solana payment names the fee payer that must co-sign it, so only the facilitator owning that
key can settle it: routing follows the fee payer, never fails over to a facilitator that cannot
sign, and an ambiguous settle is resolved from the chain (the transaction's history, its
blockhash's lifetime). Every test checks the chain (token balances, signature statuses) and,
where it matters, the ledger record, not only the JSON the client got. A frozen facilitator is
always thawed and a paused chain resumed in ``finally``: the test bed is shared by the session.
"""

from __future__ import annotations

import concurrent.futures
import copy
from typing import Any

import pytest
from solders.hash import Hash

from x402_aggregator.localnet.network import TestBed
from x402_aggregator.localnet.payer import Payment
from x402_aggregator.localnet.solana import SVM_NETWORK, SVM_V1_NETWORK, address, keypair
from x402_aggregator.schemes import SCHEMES

from ..svm import svm_body, transaction
from .conftest import AggregatorClient, Serve, attempts, wait_for

AMOUNT = 10_000  # 0.01 of the 6-decimal token
RPC = f"rpc:{SVM_NETWORK}"
EXPIRED_REASON = next(s.expired_reason for s in SCHEMES if s.name.startswith("svm"))
#: Blocks after which a transaction's recent blockhash is too old to land (Solana: 150).
BLOCKHASH_LIFETIME = 151


def svm_pay(testbed: TestBed, owner: str, **faults: Any) -> Payment:
    """A fresh payment whose fee payer is facilitator ``owner``'s."""
    _, payer = testbed.svm
    return payer.pay(testbed.svm_pay_to, AMOUNT, testbed.svm_fee_payer(owner), **faults)


def landed(testbed: TestBed, signature: str) -> bool:
    """The transaction is confirmed on chain and its instructions succeeded."""
    solana, _ = testbed.svm
    status = solana.status(signature)
    if status is None or status["confirmationStatus"] not in ("confirmed", "finalized"):
        return False
    return status["err"] is None


def upstream_requests(client: Any, name: str) -> int:
    [entry] = [up for up in client.get("/status").json()["upstreams"] if up["name"] == name]
    return int(entry["requests"])


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("owner", ["python", "typescript"])
def test_payment_goes_to_its_fee_payer_and_settles_once(
    testbed: TestBed, through: AggregatorClient, owner: str, version: int
) -> None:
    """Routed to the fee payer's facilitator whatever the priority; settled once, then duplicate."""
    other = next(name for name in testbed.facilitators if name != owner)
    client = through(other, owner)  # the owner is the *backup*: routing must still pick it
    payment = svm_pay(testbed, owner, version=version)
    before = testbed.svm_balances()

    verified = client.post("/verify", json=payment.body)
    assert verified.status_code == 200, verified.text
    assert verified.json()["isValid"] is True, verified.text
    assert verified.headers["X-Aggregator-Upstream"] == owner
    assert testbed.svm_balances() == before

    settled = client.post("/settle", json=payment.body)
    answer = settled.json()
    assert answer["success"] is True, settled.text
    assert answer["network"] == (SVM_NETWORK if version == 2 else SVM_V1_NETWORK)
    assert settled.headers["X-Aggregator-Upstream"] == owner
    assert landed(testbed, answer["transaction"])
    after = testbed.svm_balances()
    assert after["payer"] == before["payer"] - AMOUNT
    assert after["pay_to"] == before["pay_to"] + AMOUNT

    again = client.post("/settle", json=payment.body).json()
    assert (again["success"], again["errorReason"]) == (False, "duplicate_settlement"), again
    assert again["transaction"] == answer["transaction"]
    assert testbed.svm_balances() == after
    assert upstream_requests(client, other) == 0


@pytest.mark.parametrize(
    "fault", [{"signed_amount": AMOUNT - 1}, {"signed_mint": "other"}], ids=["amount", "mint"]
)
def test_a_transfer_that_disagrees_with_the_requirements_is_refused(
    testbed: TestBed, through: AggregatorClient, fault: dict[str, Any]
) -> None:
    solana, _ = testbed.svm
    if fault.get("signed_mint") == "other":
        fault = {"signed_mint": solana.other_mint}
    client = through("python", "typescript")
    payment = svm_pay(testbed, "python", **fault)
    before = testbed.svm_balances()

    verified = client.post("/verify", json=payment.body)
    assert verified.status_code == 200, verified.text
    assert verified.json()["isValid"] is False, verified.text
    assert verified.json()["invalidReason"]
    settled = client.post("/settle", json=payment.body)
    assert settled.status_code < 500, settled.text
    assert settled.json()["success"] is False, settled.text
    assert testbed.svm_balances() == before
    assert upstream_requests(client, "typescript") == 0


def test_a_payment_for_a_fee_payer_nobody_owns_is_refused_without_asking(
    testbed: TestBed, through: AggregatorClient
) -> None:
    client = through("python", "typescript")
    _, payer = testbed.svm
    payment = payer.pay(testbed.svm_pay_to, AMOUNT, address("stranger"))

    for path in ("/verify", "/settle"):
        answer = client.post(path, json=payment.body)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        reason = body.get("invalidReason") or body.get("errorReason")
        assert reason == "fee_payer_not_managed_by_facilitator", answer.text
    assert upstream_requests(client, "python") == upstream_requests(client, "typescript") == 0


def test_a_blockhash_past_its_lifetime_is_refused_and_moves_nothing(
    testbed: TestBed, serve: Serve
) -> None:
    solana, _ = testbed.svm
    aggregator = serve("python", "typescript", rpc=True)
    payment = svm_pay(testbed, "python")
    before = testbed.svm_balances()
    solana.advance(BLOCKHASH_LIFETIME)

    settled = aggregator.settle(payment)
    assert settled.status_code < 500, settled.text
    assert settled.json()["success"] is False, settled.text
    assert testbed.svm_balances() == before
    assert aggregator.record(settled)["state"] == "failed"


def test_while_the_fee_payer_s_facilitator_is_down_its_payments_fail_fast_others_settle(
    testbed: TestBed, through: AggregatorClient
) -> None:
    """Killed: its payments get a clear error at once; the other fee payer's payments settle."""
    client = through("python", "typescript")
    testbed.kill("python")
    try:
        stale = svm_pay(testbed, "python")
        before = testbed.svm_balances()
        refused = client.post("/settle", json=stale.body)
        assert refused.json()["success"] is False, refused.text
        assert refused.json()["errorReason"] in ("no_upstream_available",), refused.text
        assert refused.elapsed.total_seconds() < 2
        assert upstream_requests(client, "typescript") == 0

        fresh = svm_pay(testbed, "typescript")
        settled = client.post("/settle", json=fresh.body)
        assert settled.json()["success"] is True, settled.text
        assert settled.headers["X-Aggregator-Upstream"] == "typescript"
        after = testbed.svm_balances()
        assert after["payer"] == before["payer"] - AMOUNT
    finally:
        testbed.restart("python")


def test_concurrent_payments_for_both_fee_payers_land_once_each(
    testbed: TestBed, through: AggregatorClient
) -> None:
    client = through("python", "typescript")
    owners = ["python", "typescript"] * 8
    payments = [svm_pay(testbed, owner) for owner in owners]
    before = testbed.svm_balances()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: client.post("/settle", json=p.body), payments))

    assert [a.json()["success"] for a in answers] == [True] * 16, [a.text for a in answers]
    assert [a.headers["X-Aggregator-Upstream"] for a in answers] == owners
    assert len({a.json()["transaction"] for a in answers}) == 16
    assert all(landed(testbed, a.json()["transaction"]) for a in answers)
    after = testbed.svm_balances()
    assert after["payer"] == before["payer"] - 16 * AMOUNT
    assert after["pay_to"] == before["pay_to"] + 16 * AMOUNT


def test_concurrent_copies_of_one_payment_make_one_upstream_call(
    testbed: TestBed, through: AggregatorClient
) -> None:
    client = through("typescript", "python")
    payment = svm_pay(testbed, "typescript")
    before = testbed.svm_balances()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: client.post("/settle", json=payment.body).json(), [0] * 8)
        )

    successes = [a for a in answers if a["success"]]
    duplicates = [a for a in answers if a.get("errorReason") == "duplicate_settlement"]
    assert (len(successes), len(duplicates)) == (1, 7), answers
    assert {a["transaction"] for a in answers} == {successes[0]["transaction"]}
    assert upstream_requests(client, "typescript") == 1
    assert testbed.svm_balances()["payer"] == before["payer"] - AMOUNT


def test_frozen_fee_payer_mid_settle_is_unknown_then_resolved_from_the_chain(
    testbed: TestBed, serve: Serve
) -> None:
    """Ambiguous at the only facilitator that can sign: no failover, no guess; the chain decides.

    The other facilitator is never asked (it cannot sign). Thawed, the frozen one lands the
    settle; the next settle of the payment is answered from the chain's history, once.
    """
    aggregator = serve("python", "typescript", rpc=True, slow="python")
    payment = svm_pay(testbed, "python")
    before = testbed.svm_balances()

    testbed.freeze("python")
    try:
        unknown = aggregator.settle(payment)
        during = testbed.svm_balances()
    finally:
        testbed.thaw("python")

    answer = unknown.json()
    assert (answer["success"], answer["errorReason"]) == (False, "settlement_outcome_unknown")
    assert during == before
    record = aggregator.record(unknown)
    assert record["state"] == "ambiguous"
    assert attempts(record) == [("settle", "python", "ambiguous"), ("chain", RPC, "unused")]

    wait_for(
        lambda: testbed.svm_balances()["payer"] == before["payer"] - AMOUNT,
        15,
        "the thawed facilitator's settle",
    )
    solana, _ = testbed.svm
    solana.advance(2)  # from processed (not yet evidence) to finalized
    resolved = aggregator.settle(payment)
    assert resolved.json()["success"] is True, resolved.text
    transaction = resolved.json()["transaction"]
    assert landed(testbed, transaction)
    record = aggregator.record(resolved)
    assert (record["state"], record["transaction"]) == ("settled", transaction)
    assert attempts(record)[-1] == ("chain", RPC, "used")
    assert not [a for a in attempts(record) if a[1] == "typescript"]

    again = aggregator.settle(payment).json()
    assert (again["errorReason"], again["transaction"]) == ("duplicate_settlement", transaction)
    assert testbed.svm_balances()["payer"] == before["payer"] - AMOUNT


def test_frozen_past_the_blockhash_lifetime_ends_failed_as_expired(
    testbed: TestBed, serve: Serve
) -> None:
    """Not landed while its blockhash lived: it can never land, so the record ends failed."""
    solana, _ = testbed.svm
    aggregator = serve("python", "typescript", rpc=True, slow="python")
    payment = svm_pay(testbed, "python")
    before = testbed.svm_balances()

    testbed.freeze("python")
    try:
        unknown = aggregator.settle(payment)
        assert unknown.json()["errorReason"] == "settlement_outcome_unknown", unknown.text
        solana.advance(BLOCKHASH_LIFETIME)
        expired = aggregator.settle(payment)
    finally:
        testbed.thaw("python")

    answer = expired.json()
    assert (answer["success"], answer["errorReason"]) == (False, EXPIRED_REASON), expired.text
    record = aggregator.record(expired)
    assert record["state"] == "failed", attempts(record)
    # The journal says what the chain saw (unused); the record's note says it can never move.
    assert attempts(record)[-1] == ("chain", RPC, "unused"), attempts(record)
    assert "expired" in str(record["note"]), record
    # Settled again (a failed record may be retried), the facilitator refuses the stale
    # transaction: its blockhash is gone for good.
    assert aggregator.settle(payment).json()["success"] is False
    assert testbed.svm_balances() == before


def test_frozen_without_an_rpc_is_unknown_and_the_money_moves_once(
    testbed: TestBed, serve: Serve
) -> None:
    aggregator = serve("python", "typescript", rpc=False, slow="python")
    payment = svm_pay(testbed, "python")
    before = testbed.svm_balances()

    testbed.freeze("python")
    try:
        unknown = aggregator.settle(payment)
    finally:
        testbed.thaw("python")

    answer = unknown.json()
    assert (answer["success"], answer["errorReason"]) == (False, "settlement_outcome_unknown")
    assert aggregator.record(unknown)["state"] == "ambiguous"
    assert attempts(aggregator.record(unknown)) == [("settle", "python", "ambiguous")]
    wait_for(
        lambda: testbed.svm_balances()["payer"] == before["payer"] - AMOUNT,
        15,
        "the thawed facilitator's settle",
    )
    assert testbed.svm_balances()["pay_to"] == before["pay_to"] + AMOUNT


@pytest.mark.parametrize("path", ["/verify", "/settle"])
def test_an_undecodable_transaction_is_bad_input_and_reaches_nobody(
    testbed: TestBed, through: AggregatorClient, path: str
) -> None:
    client = through("python", "typescript")
    body = copy.deepcopy(svm_pay(testbed, "python").body)
    body["paymentPayload"]["payload"]["transaction"] = "bm90IGEgdHJhbnNhY3Rpb24="

    answer = client.post(path, json=body)
    assert answer.status_code == 400, answer.text
    reason = answer.json().get("invalidReason") or answer.json().get("errorReason")
    assert reason == "invalid_exact_svm_payload_transaction_could_not_be_decoded", answer.text
    assert upstream_requests(client, "python") == upstream_requests(client, "typescript") == 0


@pytest.mark.parametrize("path", ["/verify", "/settle"])
def test_a_transaction_that_is_not_a_transfer_is_refused_clearly(
    testbed: TestBed, through: AggregatorClient, path: str
) -> None:
    """Decodable but no TransferChecked (compute budget + memo only): the facilitator's refusal."""
    solana, _ = testbed.svm
    blockhash = Hash.from_string(solana.rpc("getLatestBlockhash")["value"]["blockhash"])
    memo_only = transaction(fee_payer=keypair("python"), blockhash=blockhash, transfer=False)
    body = svm_body(memo_only)
    body["paymentRequirements"].update(asset=solana.mint, payTo=testbed.svm_pay_to)
    body["paymentPayload"]["accepted"] = body["paymentRequirements"]
    body["paymentRequirements"]["extra"] = {"feePayer": testbed.svm_fee_payer("python")}
    client = through("python", "typescript")
    before = testbed.svm_balances()

    answer = client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    verdict = answer.json()
    assert verdict.get("isValid", verdict.get("success")) is False, answer.text
    assert verdict.get("invalidReason") or verdict.get("errorReason"), answer.text
    assert answer.headers["X-Aggregator-Upstream"] == "python"
    assert testbed.svm_balances() == before
