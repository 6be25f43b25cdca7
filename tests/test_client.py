"""The in-process client: the engine behind the x402 SDK's facilitator-client protocols."""

from __future__ import annotations

import pytest
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from x402_aggregator import AggregatorClient, AggregatorClientSync, __all__, load_config
from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.localnet.payloads import PAYER, v1_body, v2_body

from .conftest import FakeFactory


def config_for(*fakes: object) -> dict[str, object]:
    return {
        "upstreams": [
            {"name": f.name, "url": f.url, "priority": i}  # type: ignore[attr-defined]
            for i, f in enumerate(fakes)
        ],
        "health": {"startup_wait_s": 2, "timeout_s": 1},
        "routing": {"hedge": False},
    }


def sdk_v2() -> tuple[PaymentPayload, PaymentRequirements]:
    body = v2_body()
    return (
        PaymentPayload.model_validate(body["paymentPayload"]),
        PaymentRequirements.model_validate(body["paymentRequirements"]),
    )


def test_public_api_is_sorted_and_importable() -> None:
    """The package exports a small, sorted public API."""
    assert list(__all__) == sorted(__all__)


async def test_async_client_verifies_settles_and_fails_over(fakes: FakeFactory) -> None:
    """verify/settle take SDK models, fail over, and settle where the payment was verified."""
    primary, backup = fakes("primary"), fakes("backup")
    client = AggregatorClient.from_config(config_for(primary, backup))
    payload, requirements = sdk_v2()
    primary.set("verify", Mode.HTTP500)
    try:
        verified = await client.verify(payload, requirements)
        settled = await client.settle(payload, requirements)
    finally:
        await client.aclose()

    assert verified.is_valid is True
    assert verified.payer == PAYER
    assert settled.success is True
    assert settled.network == "eip155:84532"
    assert backup.calls["verify"] == 1
    assert (primary.calls["settle"], backup.calls["settle"]) == (0, 1)  # verify→settle affinity


async def test_get_supported_is_plain_and_works_before_start(fakes: FakeFactory) -> None:
    """The SDK calls get_supported synchronously at start-up, inside its loop: it must answer."""
    primary = fakes("primary", extensions=["bazaar"])
    client = AggregatorClient.from_config(config_for(primary))
    try:
        supported = client.get_supported()
        verified = await client.verify(*sdk_v2())
    finally:
        await client.aclose()

    assert [(k.x402_version, k.network) for k in supported.kinds] == [
        (2, "eip155:84532"),
        (1, "base-sepolia"),
    ]
    assert supported.extensions == ["bazaar"]
    assert verified.is_valid is True


async def test_a_settle_that_may_have_arrived_is_not_retried_elsewhere(fakes: FakeFactory) -> None:
    """In-process too, an ambiguous settle is settlement_outcome_unknown, never sent on."""
    primary, backup = fakes("primary"), fakes("backup")
    client = AggregatorClient.from_config(config_for(primary, backup))
    primary.set("settle", Mode.HTTP500)
    try:
        settled = await client.settle(*sdk_v2())
    finally:
        await client.aclose()

    assert (settled.success, settled.error_reason) == (False, "settlement_outcome_unknown")
    assert backup.calls["settle"] == 0


def test_sync_client_for_flask(fakes: FakeFactory) -> None:
    """The sync twin answers v1 and v2 from a thread without an event loop."""
    primary = fakes("primary")
    body = v1_body()
    v1 = (
        PaymentPayloadV1.model_validate(body["paymentPayload"]),
        PaymentRequirementsV1.model_validate(body["paymentRequirements"]),
    )
    with AggregatorClientSync.from_config(load_config(config_for(primary))) as client:
        supported = client.get_supported()
        verified = client.verify(*sdk_v2())
        settled = client.settle(*v1)

    assert supported.kinds
    assert verified.is_valid is True
    assert (settled.success, settled.network) == (True, "base-sepolia")


@pytest.mark.parametrize("protocol", ["FacilitatorClient", "FacilitatorClientSync"])
def test_clients_have_the_sdk_protocol_shape(protocol: str) -> None:
    """Method names and sync/async kinds match the SDK's structural protocols exactly."""
    import inspect

    from x402 import http

    expected = getattr(http, protocol)
    ours = AggregatorClient if protocol == "FacilitatorClient" else AggregatorClientSync
    for name in ("verify", "settle", "get_supported"):
        theirs = inspect.iscoroutinefunction(getattr(expected, name))
        assert inspect.iscoroutinefunction(getattr(ours, name)) == theirs, name
