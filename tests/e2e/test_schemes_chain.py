"""What the EIP-3009 scheme proves from a real chain: used (and where), unused, expired unused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from x402_aggregator.chains import EvmReader
from x402_aggregator.localnet.network import TestBed
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
