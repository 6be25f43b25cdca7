"""Ambiguous and pending settles on the real network, resolved from the chain or the same upstream.

A facilitator frozen with SIGSTOP takes the settle into its socket buffer and never answers: the
aggregator's read times out after the request may have arrived (ambiguous). A chain that stops
mining makes a facilitator answer ``settlement_pending`` with its transaction hash. In both cases
only the chain (``authorizationState`` + the ``AuthorizationUsed`` log, a receipt) or the same
upstream may decide, and the payer must be debited exactly once whatever happens afterwards.

Each test checks the chain (balances, logs, receipts) and the ledger (``GET /settlements/{id}``),
not only the JSON the client got. A frozen facilitator is always thawed and automine always
re-enabled in ``finally``: the test bed is shared by the whole session.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from web3 import Web3

from x402_aggregator.chains.evm import AUTHORIZATION_USED_TOPIC
from x402_aggregator.localnet.network import TestBed
from x402_aggregator.localnet.payer import Payment

from .conftest import FROZEN_TIMEOUT_S, Serve, attempts, wait_for

AMOUNT = 10_000
NETWORK = "eip155:84532"
RPC = f"rpc:{NETWORK}"


def tx_count(testbed: TestBed, name: str) -> int:
    """How many transactions the facilitator's account has had mined (its account nonce)."""
    address = Web3.to_checksum_address(testbed.facilitators[name].address)
    return int(testbed.chain.w3.eth.get_transaction_count(address))


def hexstr(value: Any) -> str:
    return "0x" + bytes(value).hex().removeprefix("0x")


def authorization_logs(testbed: TestBed, payment: Payment) -> list[str]:
    """Hashes of the transactions whose AuthorizationUsed log names this payment."""
    topics = [
        AUTHORIZATION_USED_TOPIC,
        "0x" + payment.payer.lower()[2:].rjust(64, "0"),
        payment.nonce.lower(),
    ]
    logs = testbed.chain.w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(testbed.payer.asset),
            "topics": topics,
            "fromBlock": 0,
            "toBlock": "latest",
        }
    )
    return [hexstr(log["transactionHash"]) for log in logs]


def sender(testbed: TestBed, transaction: str) -> str:
    """Which test bed facilitator sent a transaction."""
    sent = testbed.chain.w3.eth.get_transaction(transaction)  # type: ignore[arg-type]
    sent_by = str(sent["from"]).lower()
    names = [n for n, f in testbed.facilitators.items() if f.address.lower() == sent_by]
    assert names, f"{transaction} was sent by {sent_by}, not by a facilitator"
    return names[0]


def succeeded(testbed: TestBed, transaction: str) -> bool:
    receipt = testbed.chain.w3.eth.get_transaction_receipt(transaction)  # type: ignore[arg-type]
    return bool(receipt["status"] == 1)


def last_transaction_of(testbed: TestBed, name: str, blocks: int = 20) -> str:
    """The newest mined transaction sent by a facilitator (searching the last ``blocks``)."""
    address = testbed.facilitators[name].address.lower()
    w3 = testbed.chain.w3
    latest = int(w3.eth.block_number)
    for number in range(latest, max(-1, latest - blocks), -1):
        block = w3.eth.get_block(number, full_transactions=True)
        for tx in reversed(block["transactions"]):
            if str(tx["from"]).lower() == address:  # type: ignore[index]
                return hexstr(tx["hash"])  # type: ignore[index]
    raise AssertionError(f"no transaction from {name} in the last {blocks} blocks")


def test_frozen_primary_mid_settle_is_resolved_from_the_chain_and_fails_over(
    testbed: TestBed, serve: Serve
) -> None:
    """Ambiguous at the primary, unused on chain: failing over is money-safe, and happens.

    The primary's late settle (handled once it is thawed) reverts and changes nothing.
    """
    aggregator = serve("python", "typescript", rpc=True, slow="python")
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT)
    before = testbed.balances()
    python_txs = tx_count(testbed, "python")

    testbed.freeze("python")
    try:
        started = time.monotonic()
        settled = aggregator.settle(payment)
        elapsed = time.monotonic() - started
        after = testbed.balances()
        record = aggregator.record(settled)
    finally:
        testbed.thaw("python")

    answer = settled.json()
    assert answer["success"] is True, settled.text
    assert answer["network"] == NETWORK
    assert settled.headers["X-Aggregator-Upstream"] == "typescript"
    assert FROZEN_TIMEOUT_S <= elapsed < FROZEN_TIMEOUT_S + 5, elapsed
    transaction = answer["transaction"].lower()
    assert authorization_logs(testbed, payment) == [transaction]
    assert sender(testbed, transaction) == "typescript"
    assert after["payer"] == before["payer"] - AMOUNT
    assert after["pay_to"] == before["pay_to"] + AMOUNT
    assert (record["state"], record["transaction"], record["reported"]) == (
        "settled",
        transaction,
        True,
    )
    assert attempts(record) == [
        ("settle", "python", "ambiguous"),
        ("chain", RPC, "unused"),
        ("settle", "typescript", "ok"),
    ]
    assert record["attempts"][2]["transaction"] == transaction

    # Thawed, the primary handles the settle that waited in its socket: it mines a transaction
    # (the Python signer does not simulate first), which must revert and move nothing.
    wait_for(lambda: tx_count(testbed, "python") > python_txs, 15, "the primary's late settle")
    late = last_transaction_of(testbed, "python")
    assert not succeeded(testbed, late), f"the late settle {late} moved money"
    assert testbed.balances() == after
    assert authorization_logs(testbed, payment) == [transaction]
    later = aggregator.record(settled)
    assert (later["state"], later["transaction"]) == ("settled", transaction)
    assert attempts(later) == attempts(record)

    again = aggregator.settle(payment)
    assert again.json()["errorReason"] == "duplicate_settlement", again.text
    assert again.json()["transaction"].lower() == transaction
    assert testbed.balances() == after
    assert attempts(aggregator.record(again)) == attempts(record)  # nothing sent


def test_frozen_primary_without_rpc_gives_outcome_unknown_then_the_truth(
    testbed: TestBed, serve: Serve
) -> None:
    """Without an RPC the caller hears "unknown", never a guess, and the backup is not asked.

    Observed: a retry through the same (RPC-less) aggregator re-asks the primary, which answers
    the replay with ``transaction_failed`` and the hash of a *reverted* transaction it mined;
    the aggregator rightly does not take that for a failure and still answers
    ``settlement_outcome_unknown``. The same ledger behind an aggregator with an RPC then
    resolves it from the chain: success, with the primary's original transaction.
    """
    aggregator = serve("python", "typescript", rpc=False, slow="python")
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT)
    before = testbed.balances()
    typescript_txs = tx_count(testbed, "typescript")
    python_txs = tx_count(testbed, "python")

    testbed.freeze("python")
    try:
        unknown = aggregator.settle(payment)
        during = testbed.balances()
        record = aggregator.record(unknown)
    finally:
        testbed.thaw("python")

    answer = unknown.json()
    assert (answer["success"], answer["errorReason"]) == (False, "settlement_outcome_unknown")
    assert answer["network"] == NETWORK
    assert answer["transaction"] == ""
    assert unknown.headers["X-Aggregator-Upstream"] == "python"
    assert during == before
    assert (record["state"], record["transaction"], record["reported"]) == (
        "ambiguous",
        None,
        False,
    )
    assert attempts(record) == [("settle", "python", "ambiguous")]

    # Thawed, the primary completes the original settle on chain: the money moves once.
    wait_for(
        lambda: testbed.chain.authorization_used(payment.payer, payment.nonce),
        15,
        "the primary's original settle",
    )
    [original] = authorization_logs(testbed, payment)
    assert sender(testbed, original) == "python"
    assert succeeded(testbed, original)
    moved = testbed.balances()
    assert moved["payer"] == before["payer"] - AMOUNT

    # A retry through the same aggregator: it may only re-ask the primary.
    retried = aggregator.settle(payment)
    retry = retried.json()
    record = aggregator.record(retried)
    assert (retry["success"], retry["errorReason"]) == (False, "settlement_outcome_unknown")
    assert record["state"] == "ambiguous"
    assert attempts(record) == [
        ("settle", "python", "ambiguous"),
        ("settle", "python", "rejected"),
    ]
    replay = record["attempts"][1]
    assert replay["response"]["errorReason"] == "transaction_failed"
    assert replay["transaction"] != original
    assert sender(testbed, replay["transaction"]) == "python"
    assert not succeeded(testbed, replay["transaction"])  # the replay burnt gas, moved nothing
    assert tx_count(testbed, "python") == python_txs + 2  # the original and the reverted replay
    assert testbed.balances() == moved

    # The same ledger behind an aggregator that can read the chain: the truth, reported once.
    aggregator.stop()
    with_rpc = serve("python", "typescript", rpc=True)
    resolved = with_rpc.settle(payment)
    assert resolved.json()["success"] is True, resolved.text
    assert resolved.json()["transaction"].lower() == original
    record = with_rpc.record(resolved)
    assert (record["state"], record["transaction"], record["reported"]) == (
        "settled",
        original,
        True,
    )
    assert attempts(record)[-1] == ("chain", RPC, "used")
    assert record["attempts"][-1]["transaction"] == original
    again = with_rpc.settle(payment).json()
    assert (again["errorReason"], again["transaction"].lower()) == (
        "duplicate_settlement",
        original,
    )

    # The backup was never asked, and the payer paid once.
    assert not [a for a in attempts(record) if a[1] == "typescript"]
    assert tx_count(testbed, "typescript") == typescript_txs
    assert tx_count(testbed, "python") == python_txs + 2
    assert testbed.balances() == moved


@pytest.mark.parametrize("rpc", [True, False], ids=["rpc", "no-rpc"])
def test_settlement_pending_is_sticky_and_confirmed_by_receipt(
    testbed: TestBed, serve: Serve, rpc: bool
) -> None:
    """``settlement_pending`` keeps its transaction until it is mined, then succeeds once."""
    aggregator = serve("python", "typescript", rpc=rpc)
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT)
    before = testbed.balances()
    python_txs = tx_count(testbed, "python")
    typescript_txs = tx_count(testbed, "typescript")

    testbed.chain.set_automine(False)
    try:
        pending = aggregator.settle(payment)
        first = aggregator.record(pending)
        unmined = aggregator.settle(payment)  # a retry before the transaction is mined
        second = aggregator.record(unmined)
        unmined_balances = testbed.balances()
        testbed.chain.mine(1)
    finally:
        testbed.chain.set_automine(True)
        testbed.chain.mine(1)  # nothing left in the mempool for the next test

    assert unmined_balances == before

    answer = pending.json()
    assert (answer["success"], answer["errorReason"]) == (False, "settlement_pending"), answer
    assert answer["network"] == NETWORK
    transaction = answer["transaction"].lower()
    assert transaction.startswith("0x")
    assert pending.headers["X-Aggregator-Upstream"] == "python"
    assert (first["state"], first["transaction"]) == ("pending_onchain", transaction)
    receipt_none = [("chain", RPC, "receipt_none")] if rpc else []
    assert attempts(first) == [("settle", "python", "pending"), *receipt_none]

    assert unmined.json()["errorReason"] == "settlement_pending", unmined.text
    assert unmined.json()["transaction"].lower() == transaction
    assert (second["state"], second["transaction"]) == ("pending_onchain", transaction)
    # The retry reads the receipt (none yet) and authorizationState, which says "unused" while
    # the transaction waits in the mempool, then asks the same upstream again (never another
    # one: see the next test), which re-broadcasts the identical transaction, and reads the
    # receipt once more. Without an RPC it goes straight to that upstream.
    resent = [*receipt_none, ("chain", RPC, "unused")] if rpc else []
    assert attempts(second) == [
        *attempts(first),
        *resent,
        ("settle", "python", "pending"),
        *receipt_none,
    ]

    retried = aggregator.settle(payment)
    assert retried.json()["success"] is True, retried.text
    assert retried.json()["transaction"].lower() == transaction
    record = aggregator.record(retried)
    assert (record["state"], record["transaction"], record["reported"]) == (
        "settled",
        transaction,
        True,
    )
    if rpc:
        # The receipt settled it: nothing was sent.
        assert attempts(record) == [*attempts(second), ("chain", RPC, "receipt_ok")]
        assert record["note"].startswith("confirmed by its receipt")
    else:
        # Re-asked the sticky upstream, which answers with the same, now mined, transaction.
        assert attempts(record) == [*attempts(second), ("settle", "python", "ok")]
    for _ in range(2):
        duplicate = aggregator.settle(payment).json()
        assert duplicate["errorReason"] == "duplicate_settlement", duplicate
        assert duplicate["transaction"].lower() == transaction

    assert authorization_logs(testbed, payment) == [transaction]
    assert succeeded(testbed, transaction)
    assert tx_count(testbed, "python") == python_txs + 1  # one transaction, however often asked
    assert tx_count(testbed, "typescript") == typescript_txs
    after = testbed.balances()
    assert after["payer"] == before["payer"] - AMOUNT
    assert after["pay_to"] == before["pay_to"] + AMOUNT


@pytest.mark.parametrize("primary", ["python", "typescript"])
def test_a_pending_settle_stays_with_its_upstream_even_when_it_is_drained(
    testbed: TestBed, serve: Serve, primary: str
) -> None:
    """A retry while the transaction waits in the mempool never goes to another upstream.

    ``authorizationState`` reads "unused" until the transaction is mined, which proves nothing
    about a transaction already broadcast. Draining the primary (an operator taking it out of
    rotation) must not move the pending payment to the backup: with the Python signer as the
    backup that broadcasts a second, competing transaction (it reverts once the first is mined,
    burning gas), and the caller is told ``settlement_pending`` with a *different* hash; with
    the TypeScript one as the backup, it answers ``invalid_exact_evm_nonce_already_used`` and
    the caller's sticky ``settlement_pending`` turns into ``settlement_outcome_unknown``.
    """
    backup = next(name for name in testbed.facilitators if name != primary)
    aggregator = serve(primary, backup, rpc=True)
    payment = testbed.payer.pay(testbed.pay_to, AMOUNT)
    before = testbed.balances()
    primary_txs = tx_count(testbed, primary)
    backup_txs = tx_count(testbed, backup)

    testbed.chain.set_automine(False)
    try:
        pending = aggregator.settle(payment)
        aggregator.drain(primary)
        unmined = aggregator.settle(payment)
        record = aggregator.record(unmined)
        mempool = testbed.chain.rpc("txpool_content")["pending"]
        testbed.chain.mine(1)
    finally:
        testbed.chain.set_automine(True)
        testbed.chain.mine(1)  # nothing left in the mempool for the next test
    retried = aggregator.settle(payment)

    transaction = pending.json()["transaction"].lower()
    assert pending.json()["errorReason"] == "settlement_pending", pending.text
    assert pending.headers["X-Aggregator-Upstream"] == primary
    assert unmined.json()["errorReason"] == "settlement_pending", unmined.text
    assert unmined.json()["transaction"].lower() == transaction
    assert (record["state"], record["transaction"]) == ("pending_onchain", transaction)
    assert not [a for a in attempts(record) if a[1] == backup], attempts(record)
    senders = {address.lower() for address in mempool}
    assert senders == {testbed.facilitators[primary].address.lower()}, mempool

    assert retried.json()["success"] is True, retried.text
    assert retried.json()["transaction"].lower() == transaction
    assert authorization_logs(testbed, payment) == [transaction]
    assert tx_count(testbed, primary) == primary_txs + 1
    assert tx_count(testbed, backup) == backup_txs
    assert testbed.balances()["payer"] == before["payer"] - AMOUNT
