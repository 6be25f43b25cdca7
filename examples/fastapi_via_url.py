"""A FastAPI shop on the official x402 SDK whose facilitator is a running x402-aggregator.

Run it (the aggregator first, then the shop):

    x402-aggregator serve --config examples/aggregator.yaml           # facilitator API on :4020
    PAY_TO=0xYourAddress python examples/fastapi_via_url.py           # the shop on :4021
    curl -i http://127.0.0.1:4021/weather                             # 402 Payment Required

Needs ``pip install x402-aggregator 'x402[evm,fastapi]'`` (or this repository's ``.[test]``).

Environment:
    FACILITATOR_URL  the aggregator (default http://127.0.0.1:4020)
    PAY_TO           the address that receives the payments (required)
    NETWORK          CAIP-2 network (default eip155:84532, Base Sepolia)
    PRICE            what GET /weather costs (default $0.01, paid in the network's USDC)
    HOST, PORT       where the shop listens (default 127.0.0.1:4021)

Compared with the SDK's own examples only the facilitator URL changed: the aggregator speaks the
facilitator wire format and forwards each verify/settle to the best upstream facilitator.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from x402 import x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.middleware.fastapi import payment_middleware
from x402.mechanisms.evm.exact import ExactEvmServerScheme

DEFAULT_FACILITATOR_URL = "http://127.0.0.1:4020"
DEFAULT_NETWORK = "eip155:84532"
DEFAULT_PRICE = "$0.01"

#: "$0.01" (USD, in the network's default USDC) or an explicit asset amount:
#: {"amount": "10000", "asset": "0x...", "extra": {"name": "USD Coin", "version": "2"}}.
Price = str | dict[str, Any]


def routes(pay_to: str, network: str, price: Price) -> dict[str, Any]:
    """What the SDK's middleware sells: GET /weather, paid with the ``exact`` scheme."""
    accepts = {"scheme": "exact", "payTo": pay_to, "network": network, "price": price}
    return {"GET /weather": {"accepts": accepts, "description": "weather report"}}


def create_app(
    *,
    facilitator_url: str | None = None,
    pay_to: str | None = None,
    network: str | None = None,
    price: Price | None = None,
) -> FastAPI:
    """The shop; every argument left out is read from the environment (see the module doc)."""
    facilitator_url = facilitator_url or os.environ.get("FACILITATOR_URL", DEFAULT_FACILITATOR_URL)
    pay_to = pay_to or os.environ.get("PAY_TO")
    if not pay_to:
        raise SystemExit("set PAY_TO to the address that receives the payments")
    network = network or os.environ.get("NETWORK", DEFAULT_NETWORK)
    price = price or os.environ.get("PRICE", DEFAULT_PRICE)

    facilitator = HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url))
    server = x402ResourceServer(facilitator)
    server.register(network, ExactEvmServerScheme())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await facilitator.aclose()

    app = FastAPI(title="weather shop (x402 via x402-aggregator)", lifespan=lifespan)

    @app.get("/weather")
    def weather() -> dict[str, str]:
        return {"weather": "sunny"}

    # The SDK asks the facilitator's /supported here, so the aggregator must already be up.
    app.middleware("http")(payment_middleware(routes(pay_to, network, price), server))
    return app


def main() -> None:
    import uvicorn

    host = os.environ.get("HOST", "127.0.0.1")
    uvicorn.run(create_app(), host=host, port=int(os.environ.get("PORT", "4021")))


if __name__ == "__main__":
    main()
