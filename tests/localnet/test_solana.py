"""The local Solana cluster (litesvm behind ``svm_rpc.cjs``), over its real socket.

What the facilitators and the aggregator's chain reader rely on: real SPL transfers, a signature
executed once, failed instructions landing with their error, expired blockhashes dropped without a
trace, statuses moving from processed to finalized only as blocks follow.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from x402_aggregator.localnet.solana import (
    PAYER_FUNDS,
    SVM_NETWORK,
    TOKEN_PROGRAM,
    Solana,
    address,
    associated_token_account,
    keypair,
    start_solana,
)


@pytest.fixture(scope="module")
def solana() -> Iterator[Solana]:
    cluster = start_solana(lifetime_s=120, slot_ms=200)
    yield cluster
    cluster.stop()


def transfer(solana: Solana, amount: int, *, blockhash: str | None = None) -> str:
    """A payer -> payee TransferChecked, fee paid by ``python``'s fee payer; base64 wire bytes."""
    payer, fee_payer = keypair("payer"), keypair("python")
    mint = solana.mint
    source = associated_token_account(address("payer"), mint)
    dest = associated_token_account(address("pay_to"), mint)
    data = bytes([12]) + amount.to_bytes(8, "little") + bytes([6])
    ix = Instruction(
        Pubkey.from_string(TOKEN_PROGRAM),
        data,
        [
            AccountMeta(Pubkey.from_string(source), is_signer=False, is_writable=True),
            AccountMeta(Pubkey.from_string(mint), is_signer=False, is_writable=False),
            AccountMeta(Pubkey.from_string(dest), is_signer=False, is_writable=True),
            AccountMeta(payer.pubkey(), is_signer=True, is_writable=False),
        ],
    )
    recent = blockhash or solana.rpc("getLatestBlockhash")["value"]["blockhash"]
    message = MessageV0.try_compile(fee_payer.pubkey(), [ix], [], Hash.from_string(recent))
    tx = VersionedTransaction(message, [fee_payer, payer])
    return base64.b64encode(bytes(tx)).decode()


def send(solana: Solana, tx: str, **options: Any) -> str:
    signature: str = solana.rpc("sendTransaction", [tx, {"encoding": "base64", **options}])
    return signature


def test_it_answers_as_devnet_with_the_state_set_up(solana: Solana) -> None:
    genesis = solana.rpc("getGenesisHash")
    assert f"solana:{genesis[:32]}" == SVM_NETWORK
    assert solana.balance(address("payer")) == PAYER_FUNDS
    assert solana.balance(address("payer"), solana.other_mint) == PAYER_FUNDS
    payee_account = associated_token_account(address("pay_to"), solana.mint)
    assert solana.rpc("getTokenAccountBalance", [payee_account])["value"]["decimals"] == 6
    assert solana.lamports(address("typescript")) > 0
    assert solana.rpc("getSlot") > solana.rpc("getBlockHeight")  # slots are not heights
    mint = solana.rpc("getAccountInfo", [solana.mint, {"encoding": "jsonParsed"}])["value"]
    assert mint["data"]["parsed"]["info"]["decimals"] == 6


def test_a_transfer_moves_once_and_goes_processed_confirmed_finalized(solana: Solana) -> None:
    before = solana.balance(address("pay_to"))
    tx = transfer(solana, 1234)
    signature = send(solana, tx)

    assert solana.balance(address("pay_to")) == before + 1234
    assert send(solana, tx, skipPreflight=True) == signature  # a re-sent copy never executes
    with pytest.raises(RuntimeError, match="AlreadyProcessed"):
        send(solana, tx)
    assert solana.balance(address("pay_to")) == before + 1234
    seen = {solana.status(signature)["confirmationStatus"]}  # type: ignore[index]
    final = solana.wait_finalized(signature)
    assert final["err"] is None
    assert "finalized" in seen | {final["confirmationStatus"]}

    source = associated_token_account(address("payer"), solana.mint)
    history = solana.rpc("getSignaturesForAddress", [source, {"limit": 5}])
    assert history[0]["signature"] == signature
    landed = solana.rpc("getTransaction", [signature, {"encoding": "base64"}])
    assert base64.b64decode(landed["transaction"][0]) == base64.b64decode(tx)
    assert landed["meta"]["err"] is None


def test_a_failing_instruction_lands_with_its_error_and_moves_nothing(solana: Solana) -> None:
    before = solana.balance(address("payer"))
    signature = send(solana, transfer(solana, PAYER_FUNDS * 10), skipPreflight=True)

    status = solana.wait_finalized(signature)
    assert status["err"] == {"InstructionError": [0, {"Custom": 1}]}  # insufficient funds
    assert solana.balance(address("payer")) == before


def test_an_expired_blockhash_is_dropped_without_a_trace(solana: Solana) -> None:
    old = solana.rpc("getLatestBlockhash")["value"]["blockhash"]
    solana.advance(151)
    assert solana.rpc("isBlockhashValid", [old])["value"] is False
    before = solana.balance(address("pay_to"))

    with pytest.raises(RuntimeError, match="BlockhashNotFound"):
        send(solana, transfer(solana, 1, blockhash=old))
    dropped = send(solana, transfer(solana, 1, blockhash=old), skipPreflight=True)
    solana.advance(3)
    assert solana.status(dropped) is None
    assert solana.balance(address("pay_to")) == before


def test_paused_the_cluster_keeps_a_transaction_processed(solana: Solana) -> None:
    solana.pause()
    try:
        signature = send(solana, transfer(solana, 7))
        time.sleep(0.5)
        assert solana.status(signature)["confirmationStatus"] == "processed"  # type: ignore[index]
        tx = solana.rpc("getTransaction", [signature, {"commitment": "confirmed"}])
        assert tx is None  # processed is not evidence
    finally:
        solana.resume()
    assert solana.wait_finalized(signature)["err"] is None


def test_garbage_gets_json_rpc_errors_and_batches_work(solana: Solana) -> None:
    url = solana.rpc_url
    assert httpx.post(url, content=b"{not json").json()["error"]["code"] == -32700
    assert (
        httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "nope"}).json()["error"]["code"]
        == -32601
    )
    bad = {"jsonrpc": "2.0", "id": 2, "method": "sendTransaction", "params": ["AAAA"]}
    assert httpx.post(url, json=bad).json()["error"]["code"] == -32602
    wrong = {"jsonrpc": "2.0", "id": 3, "method": "getBalance", "params": ["0xnot-base58"]}
    assert httpx.post(url, json=wrong).json()["error"]["code"] == -32602
    batch = [
        {"jsonrpc": "2.0", "id": 4, "method": "getHealth"},
        {"jsonrpc": "2.0", "id": 5, "method": "getBlockHeight"},
    ]
    answers = httpx.post(url, json=batch).json()
    assert [a["id"] for a in answers] == [4, 5]
    assert answers[0]["result"] == "ok"
    assert httpx.get(url + "/health").text == "ok"


def test_the_keys_are_fixed_and_distinct() -> None:
    roles = ("mint", "other_mint", "payer", "pay_to", "python", "typescript", "stranger")
    assert len({address(role) for role in roles}) == len(roles)
    assert isinstance(keypair("payer"), Keypair)
    assert address("payer") == str(keypair("payer").pubkey())
