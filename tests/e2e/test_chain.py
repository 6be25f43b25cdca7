"""The chain reader against a real anvil chain with Circle's USDC, and against broken RPCs.

Settles go straight to the Python SDK facilitator; the reader must then find on chain exactly
what the facilitator reported. Broken RPCs are real loopback servers, never mocks.
"""

from __future__ import annotations

import re
import secrets
import traceback
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
from aiohttp import web
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.crypto import keccak

from x402_aggregator.chains import PUBLIC_RPCS, Receipt
from x402_aggregator.chains.evm import (
    AUTHORIZATION_STATE_SELECTOR,
    AUTHORIZATION_USED_TOPIC,
    EvmReader,
)
from x402_aggregator.errors import ChainError
from x402_aggregator.localnet.live import StalledListener, free_port
from x402_aggregator.localnet.network import TestBed
from x402_aggregator.networks import V1_NETWORKS, caip2

AMOUNT = 10_000  # 0.01 USDC
SECRET = "/v2/sk-live-0123456789abcdef?apikey=hunter2"


@pytest.fixture
async def reader(testbed: TestBed) -> AsyncIterator[EvmReader]:
    chain = EvmReader(testbed.chain.rpc_url)
    yield chain
    await chain.aclose()


async def settle(bed: TestBed, facilitator: str = "python") -> tuple[str, str, str]:
    """Settle a fresh payment directly at a facilitator: (payer, nonce, transaction)."""
    payment = bed.payer.pay(bed.pay_to, AMOUNT)
    async with httpx.AsyncClient(timeout=60) as client:
        url = bed.facilitators[facilitator].url + "/settle"
        answer = await client.post(url, json=payment.body)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True, answer.text
    return payment.payer, payment.nonce, str(body["transaction"])


def assert_no_secret(error: BaseException) -> None:
    """Neither the message nor anything a traceback would print quotes the URL's path/query."""
    printed = "".join(traceback.format_exception(error))
    for part in ("sk-live", "hunter2", "apikey"):
        assert part not in printed


def test_the_hardcoded_selector_and_topic_are_the_keccak_of_their_signatures() -> None:
    selector = function_signature_to_4byte_selector("authorizationState(address,bytes32)")
    topic = keccak(text="AuthorizationUsed(address,bytes32)")
    assert "0x" + selector.hex() == AUTHORIZATION_STATE_SELECTOR
    assert "0x" + topic.hex() == AUTHORIZATION_USED_TOPIC


def test_networks_map_v1_names_to_caip2_and_every_network_has_a_public_rpc() -> None:
    assert caip2("base-sepolia") == "eip155:84532"
    assert caip2("eip155:8453") == "eip155:8453"
    assert caip2("solana-devnet") == "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
    assert caip2("sei-testnet") == "sei-testnet"  # unknown: unchanged, the lookup misses
    assert set(V1_NETWORKS.values()) == set(PUBLIC_RPCS)


async def test_an_unused_nonce_is_neither_used_nor_found(
    testbed: TestBed, reader: EvmReader
) -> None:
    nonce = "0x" + secrets.token_hex(32)

    assert (
        await reader.authorization_used(testbed.payer.asset, testbed.payer.address, nonce) is False
    )
    assert (
        await reader.find_authorization(testbed.payer.asset, testbed.payer.address, nonce) is None
    )


@pytest.mark.parametrize("facilitator", ["python", "typescript"])
async def test_a_settled_payment_is_used_found_and_its_receipt_succeeded(
    testbed: TestBed, reader: EvmReader, facilitator: str
) -> None:
    """The chain tells exactly what the facilitator said: this nonce, this transaction."""
    payer, nonce, transaction = await settle(testbed, facilitator)
    token = testbed.payer.asset

    assert await reader.authorization_used(token, payer, nonce) is True
    assert await reader.authorization_used(token.lower(), "0x" + payer[2:].upper(), nonce)
    assert await reader.find_authorization(token, payer, nonce) == transaction
    receipt = await reader.receipt(transaction)
    assert receipt is not None
    assert receipt.transaction == transaction
    assert receipt.succeeded is True
    assert 0 < receipt.block <= testbed.chain.w3.eth.block_number
    # Another payer's authorization with the same nonce is a different authorization.
    assert await reader.authorization_used(token, testbed.pay_to, nonce) is False
    assert await reader.find_authorization(token, testbed.pay_to, nonce) is None


async def test_small_windows_walk_back_exactly_lookback_blocks(
    testbed: TestBed, reader: EvmReader
) -> None:
    payer, nonce, transaction = await settle(testbed)
    token = testbed.payer.asset
    testbed.chain.mine(5)  # the settle is now in block latest - 5

    found = await reader.find_authorization(token, payer, nonce, window=1, lookback_blocks=6)
    missed = await reader.find_authorization(token, payer, nonce, window=2, lookback_blocks=5)

    assert found == transaction
    assert missed is None
    assert await reader.find_authorization(token, payer, nonce, window=4) == transaction


async def test_a_closed_reader_opens_a_new_session_when_used_again(
    testbed: TestBed, reader: EvmReader
) -> None:
    nonce = "0x" + secrets.token_hex(32)
    assert (
        await reader.authorization_used(testbed.payer.asset, testbed.payer.address, nonce) is False
    )
    await reader.aclose()
    await reader.aclose()  # idempotent

    assert (
        await reader.authorization_used(testbed.payer.asset, testbed.payer.address, nonce) is False
    )


async def test_an_unknown_transaction_has_no_receipt(reader: EvmReader) -> None:
    assert await reader.receipt("0x" + secrets.token_hex(32)) is None


TOKEN, WHO, NONCE = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 32


@pytest.mark.parametrize(
    ("method", "args", "message"),
    [
        ("authorization_used", ("0x1234", WHO, NONCE), "token"),
        ("authorization_used", (TOKEN, "0x" + "zz" * 20, NONCE), "address"),
        ("find_authorization", (TOKEN, WHO, NONCE[2:]), "nonce"),
        ("find_authorization", (TOKEN, WHO, NONCE[:-2]), "nonce"),
        ("find_authorization", (TOKEN, WHO[:-2], NONCE), "address"),
        ("call", ("0x12", "0x"), "contract"),
        ("call", (TOKEN, "0x123"), "call data"),
        ("transaction_input", (WHO,), "transaction"),
        ("find_log", (TOKEN, ["0x12"]), "topic"),
        ("receipt", (WHO,), "transaction"),
    ],
)
async def test_malformed_inputs_are_refused_before_any_request(
    method: str, args: tuple[str, ...], message: str
) -> None:
    # A closed port: reaching the network would raise ChainError, not ValueError.
    reader = EvmReader(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match=message):
        await getattr(reader, method)(*args)
    with pytest.raises(ValueError, match="positive"):
        await reader.find_authorization(TOKEN, WHO, NONCE, window=0)
    await reader.aclose()


def test_an_rpc_url_must_be_http_with_a_host() -> None:
    for url in ("ws://127.0.0.1:8545", "127.0.0.1:8545", "http://"):
        with pytest.raises(ValueError, match="rpc_url"):
            EvmReader(url)


async def test_a_closed_port_is_a_chain_error_naming_only_the_host() -> None:
    port = free_port()
    reader = EvmReader(f"http://127.0.0.1:{port}{SECRET}")
    where = f"eth_getTransactionReceipt at http://127.0.0.1:{port}: unreachable"
    try:
        with pytest.raises(ChainError, match=re.escape(where)) as caught:
            await reader.receipt("0x" + "ab" * 32)
    finally:
        await reader.aclose()
    assert_no_secret(caught.value)


async def test_a_stalled_rpc_times_out_as_a_chain_error() -> None:
    """A client's own timeout message may quote the full URL; ours must not, nor chain it."""
    stalled = StalledListener()
    reader = EvmReader(stalled.url + SECRET, timeout_s=0.3)
    try:
        with pytest.raises(ChainError, match=r"unreachable \(\w*Timeout\w*\)") as caught:
            await reader.receipt("0x" + "ab" * 32)
    finally:
        await reader.aclose()
        stalled.close()
    assert_no_secret(caught.value)


Replies = dict[str, tuple[int, bytes]]


@pytest.fixture
async def broken_rpc() -> AsyncIterator[Callable[[Replies], str]]:
    """A real loopback HTTP server; ``serve({method: (status, body)})`` returns its URL.

    The ``"*"`` entry answers any other method. The URL carries credentials and a secret path.
    """
    replies: Replies = {}

    async def handle(request: web.Request) -> web.Response:
        method = orjson.loads(await request.read())["method"]
        status, body = replies.get(method) or replies["*"]
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    def serve(answers: Replies) -> str:
        replies.update(answers)
        return f"http://user:pw@127.0.0.1:{port}{SECRET}"

    yield serve
    await runner.cleanup()


def result(value: object) -> tuple[int, bytes]:
    """A well-formed JSON-RPC answer carrying ``value``."""
    return 200, orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": value})


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ((200, b"<html>502 Bad Gateway</html>"), "not a JSON-RPC object"),
        ((200, b"[1, 2]"), "not a JSON-RPC object"),
        ((200, b'{"jsonrpc":"2.0","id":1}'), "no result"),
        (
            (200, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"rate limited"}}'),
            "JSON-RPC error -32005 rate limited",
        ),
        (result("0x1"), "not a bool"),  # not 32 bytes
        (result("0x"), "not a token"),  # eth_call to an address without code
        (result("0x" + "0" * 63 + "2"), "not a bool"),
        ((429, result("0x" + "0" * 64)[1]), "HTTP 429"),
        ((302, b""), "HTTP 302"),
    ],
)
async def test_broken_answers_are_chain_errors_naming_only_the_host(
    broken_rpc: Callable[[Replies], str], reply: tuple[int, bytes], message: str
) -> None:
    reader = EvmReader(broken_rpc({"*": reply}))
    try:
        with pytest.raises(ChainError, match=message) as caught:
            await reader.authorization_used(TOKEN, WHO, NONCE)
    finally:
        await reader.aclose()
    assert "eth_call at http://127.0.0.1:" in str(caught.value)
    assert "user" not in str(caught.value)
    assert "pw@" not in str(caught.value)
    assert_no_secret(caught.value)


HASH = "0x" + "ab" * 32
LOG = {
    "address": TOKEN,
    "topics": [AUTHORIZATION_USED_TOPIC, "0x" + "0" * 24 + WHO[2:], NONCE],
    "transactionHash": HASH,
}


@pytest.mark.parametrize(
    ("logs", "found"),
    [
        ([LOG], HASH),
        ([{**LOG, "address": TOKEN.upper().replace("0X", "0x")}], HASH),
        ([], None),
        # A node that ignores the filter: logs of other tokens or authorizations are not evidence.
        ([{**LOG, "address": WHO}], None),
        ([{**LOG, "topics": [*LOG["topics"][:2], "0x" + "44" * 32]}], None),
        ([{**LOG, "removed": True}], None),  # reorged out
        ([{**LOG, "transactionHash": "0x12"}], ChainError),
        ([{"topics": "nope"}], ChainError),
        ("0x10", ChainError),
    ],
)
async def test_find_authorization_trusts_only_well_formed_matching_logs(
    broken_rpc: Callable[[Replies], str], logs: object, found: object
) -> None:
    reader = EvmReader(broken_rpc({"eth_blockNumber": result("0x10"), "eth_getLogs": result(logs)}))
    try:
        if found is ChainError:
            with pytest.raises(ChainError, match=re.escape("eth_getLogs at http://127.0.0.1:")):
                await reader.find_authorization(TOKEN, WHO, NONCE)
        else:
            assert await reader.find_authorization(TOKEN, WHO, NONCE) == found
    finally:
        await reader.aclose()


@pytest.mark.parametrize("block", [16, "latest", "0x", None])
async def test_a_malformed_block_number_is_a_chain_error(
    broken_rpc: Callable[[Replies], str], block: object
) -> None:
    reader = EvmReader(broken_rpc({"*": result(block)}))
    try:
        with pytest.raises(ChainError, match="eth_blockNumber"):
            await reader.find_authorization(TOKEN, WHO, NONCE)
    finally:
        await reader.aclose()


MINED = {
    "status": "0x0",
    "blockNumber": "0x2a",
    "transactionHash": HASH.upper().replace("0X", "0x"),
}


@pytest.mark.parametrize(
    ("receipt", "expected"),
    [
        (None, None),
        ({**MINED, "blockNumber": None}, None),  # a pending receipt, as some nodes give
        (MINED, Receipt(HASH, succeeded=False, block=42)),
        ({**MINED, "status": "0x1"}, Receipt(HASH, succeeded=True, block=42)),
        ({**MINED, "status": None}, ChainError),  # pre-Byzantium: no status, no evidence
        ({**MINED, "transactionHash": None}, ChainError),
        ({**MINED, "blockNumber": 42}, ChainError),
        ("0x1", ChainError),
    ],
)
async def test_receipts_are_parsed_strictly(
    broken_rpc: Callable[[Replies], str], receipt: object, expected: object
) -> None:
    reader = EvmReader(broken_rpc({"*": result(receipt)}))
    try:
        if expected is ChainError:
            with pytest.raises(ChainError, match="eth_getTransactionReceipt"):
                await reader.receipt(HASH)
        else:
            assert await reader.receipt(HASH) == expected
    finally:
        await reader.aclose()
