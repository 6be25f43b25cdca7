"""What the EVM schemes prove from a real chain: used (and where), unused, expired unused.

EIP-3009 from the token's ``authorizationState`` and ``AuthorizationUsed`` log; Permit2 (``exact``
and ``upto``) from Permit2's nonce bitmap and the settle call among the token's transfers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from web3 import Web3

from x402_aggregator.chains import EvmReader
from x402_aggregator.localnet.network import TestBed
from x402_aggregator.localnet.permit2 import PERMIT2
from x402_aggregator.localnet.permit2_payer import Method, settle_for
from x402_aggregator.protocol import PaymentRequest, parse_request
from x402_aggregator.schemes import Evidence
from x402_aggregator.schemes.base import EXPIRY_MARGIN_S

AMOUNT = 10_000


@pytest.fixture
async def reader(testbed: TestBed) -> AsyncIterator[EvmReader]:
    chain = EvmReader(testbed.chain.rpc_url)
    yield chain
    await chain.aclose()


def signed(bed: TestBed) -> tuple[dict[str, object], PaymentRequest]:
    payment = bed.payer.pay(bed.pay_to, AMOUNT)
    return payment.body, parse_request(orjson.dumps(payment.body), "settle")


async def test_a_settled_payment_is_proven_used_with_its_transaction(
    testbed: TestBed, reader: EvmReader
) -> None:
    """The scheme finds the very transaction the facilitator reported."""
    body, request = signed(testbed)
    async with httpx.AsyncClient(timeout=60) as client:
        answer = (
            await client.post(testbed.facilitators["python"].url + "/settle", json=body)
        ).json()
    assert answer["success"] is True

    evidence = await request.scheme.prove(request.facts, reader, time.time())

    assert request.scheme.name == "evm-eip3009"
    assert evidence == Evidence("used", str(answer["transaction"]).lower())


async def test_an_unsent_payment_is_unused_until_its_deadline_has_passed(
    testbed: TestBed, reader: EvmReader
) -> None:
    """Unused while it may still move; expired unused once validBefore (and the margin) passed."""
    _, request = signed(testbed)
    valid_before = request.facts.valid_before
    assert valid_before is not None

    assert (await request.scheme.prove(request.facts, reader, time.time())).state == "unused"
    later = valid_before + EXPIRY_MARGIN_S + 1
    assert (await request.scheme.prove(request.facts, reader, later)).state == "expired_unused"


def permit2_signed(bed: TestBed, method: Method) -> tuple[dict[str, object], PaymentRequest]:
    facilitator = bed.evm_address("typescript") if method == "upto" else None
    payment = bed.permit2.pay(bed.pay_to, AMOUNT, method, facilitator=facilitator)
    body = settle_for(payment, AMOUNT // 2) if method == "upto" else payment.body
    return body, parse_request(orjson.dumps(body), "settle")


async def settle_at(bed: TestBed, name: str, body: dict[str, object]) -> str:
    async with httpx.AsyncClient(timeout=60) as client:
        answer = (await client.post(bed.facilitators[name].url + "/settle", json=body)).json()
    assert answer["success"] is True, answer
    return str(answer["transaction"]).lower()


@pytest.mark.parametrize("method", ["permit2", "upto"])
async def test_a_settled_permit2_payment_is_proven_used_with_its_own_transaction(
    testbed: TestBed, reader: EvmReader, method: Method
) -> None:
    """Among several transfers from the payer to the payee, the one that spent the nonce."""
    payments = [permit2_signed(testbed, method) for _ in range(3)]
    transactions = [await settle_at(testbed, "typescript", body) for body, _ in payments]

    for (_, request), transaction in zip(payments, transactions, strict=True):
        evidence = await request.scheme.prove(request.facts, reader, time.time())
        assert request.scheme.name == "evm-permit2"
        assert evidence == Evidence("used", transaction)


async def test_an_unsent_permit2_payment_is_unused_until_its_deadline_has_passed(
    testbed: TestBed, reader: EvmReader
) -> None:
    _, request = permit2_signed(testbed, "upto")
    deadline = request.facts.valid_before
    assert deadline is not None

    assert (await request.scheme.prove(request.facts, reader, time.time())).state == "unused"
    later = deadline + EXPIRY_MARGIN_S + 1
    assert (await request.scheme.prove(request.facts, reader, later)).state == "expired_unused"


async def test_a_permit2_nonce_its_owner_cancelled_is_spent_but_names_no_transaction(
    testbed: TestBed, reader: EvmReader
) -> None:
    """``invalidateUnorderedNonces`` sets the bit without a transfer: used, and no transaction
    to report, so a settle record of it stays unresolved rather than guessed."""
    _, request = permit2_signed(testbed, "permit2")
    nonce = int(str(request.facts.nonce))
    abi = [
        {
            "type": "function",
            "name": "invalidateUnorderedNonces",
            "stateMutability": "nonpayable",
            "inputs": [{"name": "word", "type": "uint256"}, {"name": "mask", "type": "uint256"}],
            "outputs": [],
        }
    ]
    w3 = testbed.chain.w3
    permit2 = w3.eth.contract(address=Web3.to_checksum_address(PERMIT2), abi=abi)
    owner = testbed.payer.account
    call = permit2.functions.invalidateUnorderedNonces(nonce >> 8, 1 << (nonce & 0xFF))
    cancel = call.build_transaction(
        {"from": owner.address, "nonce": w3.eth.get_transaction_count(owner.address)}
    )
    signed = owner.sign_transaction(cancel)  # type: ignore[arg-type]
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction)
    )
    assert receipt["status"] == 1

    assert testbed.chain.permit2_nonce_used(owner.address, nonce)
    assert await request.scheme.prove(request.facts, reader, time.time()) == Evidence("used")
