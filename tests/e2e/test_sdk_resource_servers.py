"""Real resource servers on the official x402 SDK, with the aggregator in-process as facilitator.

FastAPI (async ``AggregatorClient``) and Flask (``AggregatorClientSync``) sell a resource for
0.01 USDC; a buyer on the SDK's own client pays on the real chain, also after the primary
facilitator dies.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask
from werkzeug.serving import make_server
from x402 import x402Client, x402ResourceServer, x402ResourceServerSync
from x402.http import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
)
from x402.http.middleware.fastapi import payment_middleware
from x402.http.middleware.flask import PaymentMiddleware
from x402.interfaces import SchemeNetworkServer
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_client

from x402_aggregator import AggregatorClient, AggregatorClientSync, load_config
from x402_aggregator.localnet.chain import NETWORK, USDC_NAME, USDC_VERSION, payer_account
from x402_aggregator.localnet.live import LiveServer
from x402_aggregator.localnet.network import TestBed

PRICE = 10_000


def routes(bed: TestBed) -> dict[str, Any]:
    price = {
        "amount": str(PRICE),
        "asset": bed.payer.asset,
        "extra": {"name": USDC_NAME, "version": USDC_VERSION},
    }
    accepts = {"scheme": "exact", "payTo": bed.pay_to, "network": NETWORK, "price": price}
    return {"GET /weather": {"accepts": accepts, "description": "weather report"}}


def buy(http: httpx.Client) -> httpx.Response:
    """What a buyer on the SDK does: read the 402, sign a payment, retry with it."""
    first = http.get("/weather")
    assert first.status_code == 402, first.text
    required = decode_payment_required_header(first.headers["payment-required"])
    buyer = x402Client()
    buyer.set_spend_controls(False)  # the test bed's USDC is not a token the SDK knows
    register_exact_evm_client(buyer, EthAccountSigner(payer_account()))
    payload = asyncio.run(buyer.create_payment_payload(required))
    return http.get(
        "/weather", headers={"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}
    )


def settled_via(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    settlement = decode_payment_response_header(response.headers["payment-response"])
    assert settlement.success is True
    return settlement.transaction


def evm_server_scheme() -> SchemeNetworkServer:
    """The SDK's EVM exact server scheme, as the Protocol it satisfies when it runs.

    x402 2.25 leaves its ``__init__`` unannotated and types ``payment_flows`` as a plain dict,
    which mypy does not match against the Protocol's mapping of flow configurations.
    """
    return cast(SchemeNetworkServer, ExactEvmServerScheme())  # type: ignore[no-untyped-call]


@pytest.fixture
def fastapi_shop(testbed: TestBed) -> Iterator[httpx.Client]:
    facilitator = AggregatorClient.from_config(testbed.aggregator_config("python", "typescript"))
    server = x402ResourceServer(facilitator)
    server.register(NETWORK, evm_server_scheme())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await facilitator.aclose()  # its pools live on this app's event loop

    app = FastAPI(lifespan=lifespan)

    @app.get("/weather")
    def weather() -> dict[str, str]:
        return {"weather": "sunny"}

    app.middleware("http")(payment_middleware(routes(testbed), server))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        yield http


@pytest.fixture
def flask_shop(testbed: TestBed) -> Iterator[httpx.Client]:
    config = load_config(testbed.aggregator_config("python", "typescript"))
    with AggregatorClientSync.from_config(config) as facilitator:
        server = x402ResourceServerSync(facilitator)
        server.register(NETWORK, evm_server_scheme())
        app = Flask("shop")

        @app.get("/weather")
        def weather() -> dict[str, str]:
            return {"weather": "sunny"}

        PaymentMiddleware(app, routes(testbed), server)
        http_server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=http_server.serve_forever, daemon=True)
        thread.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{http_server.port}", timeout=60) as http:
                yield http
        finally:
            http_server.shutdown()
            thread.join(10)


@pytest.mark.parametrize("shop", ["fastapi_shop", "flask_shop"])
def test_sdk_resource_server_sells_through_the_in_process_aggregator(
    testbed: TestBed, shop: str, request: pytest.FixtureRequest
) -> None:
    """A paid GET settles on chain, and keeps working after the primary facilitator dies."""
    http: httpx.Client = request.getfixturevalue(shop)
    before = testbed.balances()

    first = settled_via(buy(http))
    testbed.kill("python")
    try:
        second = settled_via(buy(http))
    finally:
        testbed.restart("python")

    assert first != second
    after = testbed.balances()
    assert after["payer"] == before["payer"] - 2 * PRICE
    assert after["pay_to"] == before["pay_to"] + 2 * PRICE
