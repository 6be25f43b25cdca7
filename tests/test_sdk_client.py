"""The official x402 SDK's HTTP facilitator client, pointed at the aggregator, works unchanged."""

from __future__ import annotations

import orjson
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.localnet.payloads import v1_body, v2_body

from .conftest import AggregatorFactory, FakeFactory


def sdk_objects() -> tuple[PaymentPayload, PaymentRequirements]:
    body = v2_body()
    return (
        PaymentPayload.model_validate(body["paymentPayload"]),
        PaymentRequirements.model_validate(body["paymentRequirements"]),
    )


async def test_sdk_client_verifies_settles_and_reads_supported(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """HTTPFacilitatorClient parses every answer of ours, including after a verify failover."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.set("verify", Mode.HTTP500)
    client = HTTPFacilitatorClient(FacilitatorConfig(url=agg.url))
    payload, requirements = sdk_objects()

    supported = client.get_supported()
    verified = await client.verify(payload, requirements)
    settled = await client.settle(payload, requirements)
    await client.aclose()

    assert [(k.x402_version, k.network) for k in supported.kinds] == [
        (2, "eip155:84532"),
        (1, "base-sepolia"),
    ]
    assert verified.is_valid is True
    assert settled.success is True
    assert settled.network == "eip155:84532"


async def test_sdk_client_sees_rejections_as_values_not_errors(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A rejection the upstream sent as HTTP 400 reaches the SDK as a clean isValid=false."""
    primary = fakes("primary")
    agg = aggregator(primary)
    primary.set("*", Mode.INVALID, status=400, dialect="x402rs", reason="insufficient_funds")
    client = HTTPFacilitatorClient(FacilitatorConfig(url=agg.url))
    payload, requirements = sdk_objects()

    verified = await client.verify(payload, requirements)
    settled = await client.settle(payload, requirements)
    await client.aclose()

    assert (verified.is_valid, verified.invalid_reason) == (False, "insufficient_funds")
    assert (settled.success, settled.error_reason) == (False, "insufficient_funds")
    assert settled.network == "eip155:84532"


async def test_sdk_client_with_legacy_v1_objects_verifies_and_settles(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """The same client fed v1 models (as legacy resource servers hold them) works unchanged."""
    primary = fakes("primary")
    agg = aggregator(primary)
    body = v1_body()
    payload = PaymentPayloadV1.model_validate(body["paymentPayload"])
    requirements = PaymentRequirementsV1.model_validate(body["paymentRequirements"])
    client = HTTPFacilitatorClient(FacilitatorConfig(url=agg.url))

    verified = await client.verify(payload, requirements)
    settled = await client.settle(payload, requirements)
    again = await client.settle(payload, requirements)
    await client.aclose()

    assert verified.is_valid is True
    assert settled.success is True
    assert settled.network == "base-sepolia"
    assert (again.success, again.error_reason) == (False, "duplicate_settlement")
    assert again.transaction == settled.transaction
    [sent] = [r.body for r in primary.received if r.op == "settle"]  # the duplicate sent nothing
    assert orjson.loads(sent)["x402Version"] == 1
