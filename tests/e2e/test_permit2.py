"""Permit2 payments through the aggregator on the local chain: ``exact`` by Permit2 and ``upto``.

The payer pays in a plain ERC-20 (no EIP-3009) it has approved to Permit2; both SDK facilitators
settle through the x402 proxies. A Permit2 payment is (network, owner, nonce): an ``upto``
settled below its maximum is the same payment, and settling it again is a duplicate. An ``upto``
names the facilitator that must settle it; routing follows that name. An ambiguous settle is
resolved from Permit2's nonce bitmap (and the settle transaction found among the token's
transfers), never guessed. Every test checks the chain (token balances, the nonce) and, where it
matters, the ledger record. A frozen facilitator is always thawed in ``finally``.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from x402_aggregator.localnet.live import free_port
from x402_aggregator.localnet.network import TestBed
from x402_aggregator.localnet.payer import Payment
from x402_aggregator.localnet.permit2_payer import Method, settle_for

from .conftest import AggregatorClient, Serve, attempts, wait_for
from .test_settlement_chain import tx_count

MAXIMUM = 10_000  # 0.01 of the 6-decimal token
USED = 6_500  # what an upto payment's resource server settles
NETWORK = "eip155:84532"
RPC = f"rpc:{NETWORK}"
PRIMARIES = ["python", "typescript"]


def other(testbed: TestBed, name: str) -> str:
    return next(n for n in testbed.facilitators if n != name)


def pay(testbed: TestBed, method: Method, owner: str = "python") -> Payment:
    """A fresh payment; an ``upto`` one is bound to facilitator ``owner``'s address."""
    facilitator = testbed.evm_address(owner) if method == "upto" else None
    return testbed.permit2.pay(testbed.pay_to, MAXIMUM, method, facilitator=facilitator)


def settle_body(payment: Payment, method: Method) -> dict[str, object]:
    """What the resource server sends to ``/settle``: ``upto`` settles what was used."""
    return settle_for(payment, USED) if method == "upto" else payment.body


def charged(method: Method) -> int:
    return USED if method == "upto" else MAXIMUM


def upstream_requests(client: object, name: str) -> int:
    status = client.get("/status").json()  # type: ignore[attr-defined]
    [entry] = [up for up in status["upstreams"] if up["name"] == name]
    return int(entry["requests"])


@pytest.mark.parametrize("method", ["permit2", "upto"])
@pytest.mark.parametrize("primary", PRIMARIES)
def test_permit2_and_upto_payments_settle_once_for_the_settled_amount(
    testbed: TestBed, through: AggregatorClient, primary: str, method: Method
) -> None:
    """Verified for the maximum, settled for what was used, moved once; a replay is a duplicate."""
    client = through(primary, other(testbed, primary))
    payment = pay(testbed, method, owner=primary)
    before = testbed.token_balances()

    verified = client.post("/verify", json=payment.body)
    assert verified.status_code == 200, verified.text
    assert verified.json()["isValid"] is True, verified.text
    assert verified.headers["X-Aggregator-Upstream"] == primary
    assert testbed.token_balances() == before

    settled = client.post("/settle", json=settle_body(payment, method))
    answer = settled.json()
    assert answer["success"] is True, settled.text
    assert (answer["network"], settled.headers["X-Aggregator-Upstream"]) == (NETWORK, primary)
    assert testbed.chain.permit2_nonce_used(payment.payer, payment.nonce)
    after = testbed.token_balances()
    assert after["payer"] == before["payer"] - charged(method)
    assert after["pay_to"] == before["pay_to"] + charged(method)

    # Re-presented as it was, or (upto) for another amount: the same payment, settled once.
    replays = [settle_body(payment, method)]
    if method == "upto":
        replays.append(settle_for(payment, USED - 1))
    for replay in replays:
        again = client.post("/settle", json=replay).json()
        assert (again["success"], again["errorReason"]) == (False, "duplicate_settlement"), again
        assert again["transaction"] == answer["transaction"]
    assert testbed.token_balances() == after
    assert upstream_requests(client, other(testbed, primary)) == 0


@pytest.mark.parametrize("owner", PRIMARIES)
def test_an_upto_payment_goes_to_the_facilitator_it_names(
    testbed: TestBed, through: AggregatorClient, owner: str
) -> None:
    """The named facilitator is the backup here: routing still sends verify and settle to it."""
    client = through(other(testbed, owner), owner)
    payment = pay(testbed, "upto", owner=owner)
    before = testbed.token_balances()

    verified = client.post("/verify", json=payment.body)
    settled = client.post("/settle", json=settle_for(payment, USED))

    assert verified.json()["isValid"] is True, verified.text
    assert settled.json()["success"] is True, settled.text
    assert verified.headers["X-Aggregator-Upstream"] == owner
    assert settled.headers["X-Aggregator-Upstream"] == owner
    assert upstream_requests(client, other(testbed, owner)) == 0
    assert testbed.token_balances()["payer"] == before["payer"] - USED


def test_an_upto_payment_for_a_facilitator_nobody_runs_is_refused_without_asking(
    testbed: TestBed, through: AggregatorClient
) -> None:
    client = through("python", "typescript")
    payment = testbed.permit2.pay(
        testbed.pay_to, MAXIMUM, "upto", facilitator=testbed.stranger.address
    )

    for path, body in (("/verify", payment.body), ("/settle", settle_for(payment, USED))):
        answer = client.post(path, json=body)
        assert answer.status_code == 200, answer.text
        reply = answer.json()
        assert reply.get("isValid", reply.get("success")) is False, answer.text
        assert reply.get("invalidReason", reply.get("errorReason")) == "upto_facilitator_mismatch"
    assert upstream_requests(client, "python") == upstream_requests(client, "typescript") == 0


@pytest.mark.parametrize("primary", PRIMARIES)
def test_an_upto_settle_above_its_maximum_is_refused_and_moves_nothing(
    testbed: TestBed, serve: Serve, primary: str
) -> None:
    """The facilitator's refusal reaches the caller; the payment can still settle within it."""
    aggregator = serve(primary, other(testbed, primary), rpc=True)
    payment = pay(testbed, "upto", owner=primary)
    before = testbed.token_balances()

    refused = aggregator.client.post("/settle", json=settle_for(payment, MAXIMUM + 1))
    answer = refused.json()
    assert refused.status_code == 200, refused.text
    assert answer["success"] is False, refused.text
    assert "exceed" in answer["errorReason"], refused.text
    assert testbed.token_balances() == before
    assert not testbed.chain.permit2_nonce_used(payment.payer, payment.nonce)
    assert aggregator.record(refused)["state"] == "failed"

    within = aggregator.client.post("/settle", json=settle_for(payment, MAXIMUM))
    assert within.json()["success"] is True, within.text
    assert testbed.token_balances()["payer"] == before["payer"] - MAXIMUM


def test_frozen_primary_mid_permit2_settle_is_resolved_from_the_nonce_and_fails_over(
    testbed: TestBed, serve: Serve
) -> None:
    """Ambiguous at the primary, Permit2's nonce unused: failing over is safe, and happens.

    Thawed, the primary handles the settle that waited in its socket; the nonce is spent by
    then, so it moves nothing.
    """
    aggregator = serve("python", "typescript", rpc=True, slow="python")
    payment = pay(testbed, "permit2")
    before = testbed.token_balances()
    python_txs = tx_count(testbed, "python")

    testbed.freeze("python")
    try:
        settled = aggregator.settle(payment)
        record = aggregator.record(settled)
    finally:
        testbed.thaw("python")

    answer = settled.json()
    assert answer["success"] is True, settled.text
    assert settled.headers["X-Aggregator-Upstream"] == "typescript"
    assert attempts(record) == [
        ("settle", "python", "ambiguous"),
        ("chain", RPC, "unused"),
        ("settle", "typescript", "ok"),
    ]
    assert (record["state"], record["transaction"]) == ("settled", answer["transaction"].lower())
    after = testbed.token_balances()
    assert after["payer"] == before["payer"] - MAXIMUM

    again = aggregator.settle(payment).json()
    assert (again["errorReason"], again["transaction"]) == (
        "duplicate_settlement",
        answer["transaction"],
    )
    # Thawed, the primary handles the settle that waited in its socket: the nonce is spent, so
    # the transaction it mines (its signer does not simulate first) reverts and moves nothing.
    wait_for(lambda: tx_count(testbed, "python") > python_txs, 15, "the primary's late settle")
    assert testbed.token_balances() == after


def test_frozen_upto_facilitator_is_unknown_then_resolved_from_the_nonce(
    testbed: TestBed, serve: Serve
) -> None:
    """Bound to the frozen facilitator: no failover, no guess. Thawed, it lands the settle; the
    next settle of the payment is answered from the chain: the nonce is spent, and the settle
    transaction is found among the token's transfers, with the amount that was used."""
    aggregator = serve("python", "typescript", rpc=True, slow="python")
    payment = pay(testbed, "upto", owner="python")
    before = testbed.token_balances()

    testbed.freeze("python")
    try:
        unknown = aggregator.client.post("/settle", json=settle_for(payment, USED))
        during = testbed.token_balances()
    finally:
        testbed.thaw("python")

    answer = unknown.json()
    assert (answer["success"], answer["errorReason"]) == (False, "settlement_outcome_unknown")
    assert during == before
    record = aggregator.record(unknown)
    assert record["state"] == "ambiguous"
    assert attempts(record) == [("settle", "python", "ambiguous"), ("chain", RPC, "unused")]

    wait_for(
        lambda: testbed.chain.permit2_nonce_used(payment.payer, payment.nonce),
        15,
        "the thawed facilitator's settle",
    )
    resolved = aggregator.client.post("/settle", json=settle_for(payment, USED))
    assert resolved.json()["success"] is True, resolved.text
    transaction = resolved.json()["transaction"]
    receipt = testbed.chain.w3.eth.get_transaction_receipt(transaction)
    assert receipt["status"] == 1
    assert str(receipt["from"]).lower() == testbed.evm_address("python").lower()
    record = aggregator.record(resolved)
    assert (record["state"], record["transaction"]) == ("settled", transaction.lower())
    assert attempts(record)[-1] == ("chain", RPC, "used")
    assert not [a for a in attempts(record) if a[1] == "typescript"]
    assert testbed.token_balances()["payer"] == before["payer"] - USED

    again = aggregator.client.post("/settle", json=settle_for(payment, USED)).json()
    assert (again["errorReason"], again["transaction"]) == ("duplicate_settlement", transaction)


@pytest.mark.parametrize("method", ["permit2", "upto"])
def test_frozen_primary_without_an_rpc_stays_unknown_and_the_money_moves_once(
    testbed: TestBed, serve: Serve, method: Method
) -> None:
    aggregator = serve("python", "typescript", rpc=False, slow="python")
    payment = pay(testbed, method, owner="python")
    before = testbed.token_balances()

    testbed.freeze("python")
    try:
        unknown = aggregator.client.post("/settle", json=settle_body(payment, method))
    finally:
        testbed.thaw("python")

    answer = unknown.json()
    assert (answer["success"], answer["errorReason"]) == (False, "settlement_outcome_unknown")
    record = aggregator.record(unknown)
    assert record["state"] == "ambiguous"
    assert attempts(record) == [("settle", "python", "ambiguous")]
    wait_for(
        lambda: testbed.token_balances()["payer"] == before["payer"] - charged(method),
        15,
        "the thawed facilitator's settle",
    )
    assert testbed.token_balances()["pay_to"] == before["pay_to"] + charged(method)
    assert upstream_requests(aggregator.client, "typescript") == 0


def serve_process(
    config: dict[str, Any], folder: Path, name: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``x402-aggregator serve`` as its own process on ``config``; its URL once it is healthy."""
    port = free_port()
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**config, "server": {"host": "127.0.0.1", "port": port}}))
    with (folder / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "x402_aggregator", "serve", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, (folder / f"{name}.log").read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, 20, f"{name} healthy")
    return process, url


@pytest.mark.parametrize("method", ["permit2", "upto"])
def test_kill_9_of_serve_mid_settle_is_resolved_by_the_restarted_process(
    testbed: TestBed, tmp_path: Path, method: Method
) -> None:
    """The process dies while the facilitator's settle transaction waits to be mined; the next
    process, on the same ledger, resolves the record from the chain at start-up, and the caller
    who never got an answer hears the truth (the amount that was used, moved once)."""
    config = testbed.aggregator_config("python", "typescript", rpc=True)
    config["ledger"] = {**config["ledger"], "url": f"sqlite:///{tmp_path / 'ledger.db'}"}
    config["ledger"]["resolve_interval_s"] = 0.5
    payment = pay(testbed, method, owner="python")
    body = settle_body(payment, method)
    before = testbed.token_balances()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        testbed.chain.set_automine(False)
        first, url = serve_process(config, tmp_path, "first")
        processes.append(first)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            lost = pool.submit(httpx.post, f"{url}/settle", json=body, timeout=60)
            wait_for(
                lambda: int(testbed.chain.rpc("txpool_status")["pending"], 16) > 0,
                15,
                "the facilitator's settle transaction in the mempool",
            )
            os.kill(first.pid, signal.SIGKILL)
            with pytest.raises(httpx.TransportError):
                lost.result(timeout=10)
        testbed.chain.set_automine(True)
        testbed.chain.mine(1)
        assert testbed.chain.permit2_nonce_used(payment.payer, payment.nonce)

        second, url = serve_process(config, tmp_path, "second")
        processes.append(second)

        def settled() -> list[dict[str, Any]]:
            found = httpx.get(f"{url}/settlements", params={"state": "settled"}, timeout=5)
            records: list[dict[str, Any]] = found.json()["settlements"]
            return records

        wait_for(lambda: bool(settled()), 15, "resolution at start-up")
        retry = httpx.post(f"{url}/settle", json=body, timeout=30).json()
        again = httpx.post(f"{url}/settle", json=body, timeout=30).json()
        [listed] = settled()
        record = httpx.get(f"{url}/settlements/{quote(listed['id'], safe='')}", timeout=5).json()
    finally:
        testbed.chain.set_automine(True)
        testbed.chain.mine(1)
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)

    assert retry["success"] is True, retry
    assert record["transaction"] == retry["transaction"].lower()
    first_attempt = record["attempts"][0]  # sent by the killed process, never answered
    assert (first_attempt["upstream"], first_attempt["outcome"]) == ("python", None)
    assert attempts(record)[-1] == ("chain", RPC, "used")
    assert not [a for a in attempts(record) if a[1] == "typescript"]
    receipt = testbed.chain.w3.eth.get_transaction_receipt(retry["transaction"])
    assert receipt["status"] == 1
    assert str(receipt["from"]).lower() == testbed.evm_address("python").lower()
    assert (again["errorReason"], again["transaction"]) == (
        "duplicate_settlement",
        retry["transaction"],
    )
    after = testbed.token_balances()
    assert after["payer"] == before["payer"] - charged(method)
    assert after["pay_to"] == before["pay_to"] + charged(method)
