"""Solana ``exact`` payments behind the seam: identity, binding, bad input, chain evidence.

The chain is a scripted JSON-RPC server on 127.0.0.1 (a real socket, the real ``SvmReader``):
each test says what the cluster answers and checks what the scheme concludes from it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from x402_aggregator.chains import SvmReader, readers, svm_wire
from x402_aggregator.errors import ChainError, RequestError
from x402_aggregator.localnet.live import LiveServer
from x402_aggregator.protocol import parse_request
from x402_aggregator.schemes.svm_exact import BLOCK_HEIGHT_EXCEEDED, HISTORY, SvmExactScheme

from .svm import FEE_PAYER, OTHER_FEE_PAYER, PAYER, svm_body, transaction

Handler = Callable[[list[Any]], Any]


def sig(name: str) -> str:
    """A base58 64-byte signature standing for a transaction called ``name``."""
    return svm_wire.b58encode(hashlib.sha512(name.encode()).digest())


class ScriptedRpc:
    """A Solana JSON-RPC endpoint answering from ``self.methods``; records every call."""

    def __init__(self) -> None:
        self.methods: dict[str, Handler] = {}
        self.calls: list[str] = []
        app = Starlette(routes=[Route("/", self._handle, methods=["POST"])])
        self.server = LiveServer(app).start()

    async def _handle(self, request: Request) -> JSONResponse:
        call = orjson.loads(await request.body())
        self.calls.append(call["method"])
        handler = self.methods.get(call["method"])
        if handler is None:
            error = {"code": -32601, "message": "Method not found"}
            return JSONResponse({"jsonrpc": "2.0", "id": call["id"], "error": error})
        return JSONResponse({"jsonrpc": "2.0", "id": call["id"], "result": handler(call["params"])})


@pytest.fixture
def rpc() -> Iterator[ScriptedRpc]:
    scripted = ScriptedRpc()
    yield scripted
    scripted.server.stop()


def facts_of(body: dict[str, Any]) -> Any:
    return parse_request(orjson.dumps(body), "settle").facts


def chain(rpc: ScriptedRpc, *, valid: bool, history: list[tuple[str, bytes, bool]]) -> None:
    """The cluster: whether the blockhash lives, and the source account's history (newest first)."""
    landed = {signature: (raw, failed) for signature, raw, failed in history}
    rpc.methods["isBlockhashValid"] = lambda p: {"context": {"slot": 1}, "value": valid}
    rpc.methods["getSignaturesForAddress"] = lambda p: [
        {"signature": s, "slot": 1, "err": None} for s, _, _ in history
    ]
    rpc.methods["getTransaction"] = lambda p: (
        {
            "slot": 7,
            "transaction": [base64.b64encode(landed[p[0]][0]).decode(), "base64"],
            "meta": {"err": {"InstructionError": [2, {"Custom": 1}]} if landed[p[0]][1] else None},
        }
        if p[0] in landed
        else None
    )


def test_identity_is_the_message_stable_across_envelopes_and_the_fee_payer_s_signature() -> None:
    tx = transaction()
    v2 = facts_of(svm_body(tx))
    v1 = facts_of(svm_body(tx, version=1))
    countersigned = facts_of(svm_body(transaction(fee_payer_signs=True)))
    other = facts_of(svm_body(transaction(memo=b"another nonce")))

    assert v2.identity == v1.identity == countersigned.identity
    assert v2.identity.startswith("solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1|svm|")
    assert other.identity != v2.identity
    assert v2.payer == str(PAYER.pubkey())
    assert v2.nonce == str(tx.signatures[1])  # the payer's signature
    assert v2.bound_signer == str(FEE_PAYER.pubkey())


def test_the_bound_signer_is_the_transaction_s_fee_payer_not_what_the_envelope_claims() -> None:
    """Only the key in account 0 can co-sign: route by it even if ``extra`` names another."""
    body = svm_body(transaction(fee_payer=OTHER_FEE_PAYER))

    assert facts_of(body).bound_signer == str(OTHER_FEE_PAYER.pubkey())


@pytest.mark.parametrize(
    "garbage",
    ["not base64!", "", base64.b64encode(b"\x01" + b"\0" * 10).decode(), "AAAA"],
    ids=["not-base64", "empty", "truncated", "no-signatures"],
)
def test_an_undecodable_transaction_is_a_400_with_the_svm_reason(garbage: str) -> None:
    body = svm_body()
    body["paymentPayload"]["payload"]["transaction"] = garbage

    with pytest.raises(RequestError) as raised:
        facts_of(body)
    assert raised.value.status == 400
    assert raised.value.reason == "invalid_exact_svm_payload_transaction_could_not_be_decoded"


def test_the_wire_decoder_raises_only_value_errors_on_random_bytes() -> None:
    raw = bytes(transaction())
    for cut in range(len(raw)):
        with pytest.raises(ValueError, match=r"\w"):
            svm_wire.decode(raw[:cut])
    for _ in range(300):
        with contextlib.suppress(ValueError):
            svm_wire.decode(os.urandom(200))


def test_base58_round_trips_with_leading_zeros() -> None:
    for data in (b"", b"\0", b"\0\0\x01", os.urandom(32), b"\0" + os.urandom(63)):
        assert svm_wire.b58decode(svm_wire.b58encode(data)) == data
    with pytest.raises(ValueError, match="not base58"):
        svm_wire.b58decode("0OIl")


async def test_landed_and_succeeded_is_used_with_its_signature(rpc: ScriptedRpc) -> None:
    tx = transaction(fee_payer_signs=True)
    chain(
        rpc,
        valid=True,
        history=[
            (sig("older"), bytes(transaction(amount=1)), False),
            (sig("theirs"), bytes(tx), False),
        ],
    )
    reader = SvmReader(rpc.server.url)
    try:
        evidence = await SvmExactScheme().prove(facts_of(svm_body(tx)), reader, 0.0)
    finally:
        await reader.aclose()

    assert (evidence.state, evidence.transaction) == ("used", sig("theirs"))
    assert rpc.calls[:2] == ["isBlockhashValid", "getSignaturesForAddress"]


@pytest.mark.parametrize(
    ("valid", "landed_failed", "expected"),
    [
        (True, None, "unused"),
        (False, None, "expired_unused"),
        (True, True, "expired_unused"),  # landed with a failed instruction: spent, moved nothing
    ],
)
async def test_what_the_chain_proves(
    rpc: ScriptedRpc, valid: bool, landed_failed: bool | None, expected: str
) -> None:
    tx = transaction()
    history = [] if landed_failed is None else [(sig("it"), bytes(tx), landed_failed)]
    chain(rpc, valid=valid, history=history)
    reader = SvmReader(rpc.server.url)
    try:
        evidence = await SvmExactScheme().prove(facts_of(svm_body(tx)), reader, 0.0)
    finally:
        await reader.aclose()

    assert evidence.state == expected


async def test_a_full_history_page_without_the_payment_is_unknown(rpc: ScriptedRpc) -> None:
    """It may be older than the page read: never guess "unused"."""
    others = [(sig(f"s{i}"), bytes(transaction(amount=i + 1)), False) for i in range(HISTORY)]
    chain(rpc, valid=True, history=others)
    reader = SvmReader(rpc.server.url)
    try:
        evidence = await SvmExactScheme().prove(facts_of(svm_body()), reader, 0.0)
    finally:
        await reader.aclose()

    assert evidence.state == "unknown"


async def test_receipts_need_confirmed_commitment(rpc: ScriptedRpc) -> None:
    statuses = {
        "processed": {"slot": 5, "err": None, "confirmationStatus": "processed"},
        "confirmed": {"slot": 6, "err": None, "confirmationStatus": "confirmed"},
        "failed": {
            "slot": 7,
            "err": {"InstructionError": [0, "X"]},
            "confirmationStatus": "finalized",
        },
    }
    rpc.methods["getSignatureStatuses"] = lambda p: {
        "context": {"slot": 9},
        "value": [statuses.get(p[0][0])],
    }
    reader = SvmReader(rpc.server.url)
    try:
        mine = sig("mine")
        assert await reader.receipt(mine) is None
        statuses[mine] = statuses["processed"]
        assert await reader.receipt(mine) is None
        statuses[mine] = statuses["confirmed"]
        receipt = await reader.receipt(mine)
        assert receipt is not None
        assert (receipt.succeeded, receipt.block) == (True, 6)
        statuses[mine] = statuses["failed"]
        receipt = await reader.receipt(mine)
        assert receipt is not None
        assert not receipt.succeeded
        with pytest.raises(ValueError, match="base58"):
            await reader.receipt("0x" + "ab" * 32)
    finally:
        await reader.aclose()


async def test_rpc_garbage_and_errors_are_chain_errors_naming_only_the_origin(
    rpc: ScriptedRpc,
) -> None:
    rpc.methods["isBlockhashValid"] = lambda p: {"value": "yes"}
    reader = SvmReader(rpc.server.url + "/?api-key=secret")
    try:
        with pytest.raises(ChainError) as raised:
            await reader.blockhash_valid("4QjEBrJnATvydaCoPb7j4cneA5vSJNFsAYHQwRAjAjmQ")
        with pytest.raises(ChainError) as missing:
            await reader.signatures_for_address(str(PAYER.pubkey()))
    finally:
        await reader.aclose()
    assert "secret" not in str(raised.value)
    assert "secret" not in str(missing.value)


def test_solana_rpcs_in_config_make_svm_readers() -> None:
    made = readers({"solana-devnet": "http://127.0.0.1:9"}, timeout_s=1)

    assert isinstance(made["solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"], SvmReader)
    assert SvmExactScheme().expired_reason == BLOCK_HEIGHT_EXCEEDED
