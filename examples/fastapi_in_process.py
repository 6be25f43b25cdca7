"""The same FastAPI shop with the aggregator in-process: no separate facilitator service.

Run it:

    PAY_TO=0xYourAddress python examples/fastapi_in_process.py       # the shop on :4021
    curl -i http://127.0.0.1:4021/weather                             # 402 Payment Required

Needs ``pip install x402-aggregator 'x402[evm,fastapi]'`` (or this repository's ``.[test]``).

Environment:
    X402_AGGREGATOR_CONFIG  the aggregator's YAML file (default: examples/aggregator.yaml);
                            the same file ``x402-aggregator serve --config`` reads
    PAY_TO                  the address that receives the payments (required)
    NETWORK                 CAIP-2 network (default eip155:84532, Base Sepolia)
    PRICE                   what GET /weather costs (default $0.01, paid in the network's USDC)
    HOST, PORT              where the shop listens (default 127.0.0.1:4021)

``AggregatorClient`` satisfies the SDK's ``FacilitatorClient`` protocol: health probes, hedging,
failover and the settlement ledger run inside this process, on the app's event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from x402 import x402ResourceServer
from x402.http.middleware.fastapi import payment_middleware
from x402.mechanisms.evm.exact import ExactEvmServerScheme

from x402_aggregator import AggregatorClient

DEFAULT_CONFIG = Path(__file__).with_name("aggregator.yaml")
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
    config: str | Path | dict[str, Any] | None = None,
    *,
    pay_to: str | None = None,
    network: str | None = None,
    price: Price | None = None,
) -> FastAPI:
    """The shop; ``config`` is a YAML path or a mapping, the rest default to the environment."""
    config = config or os.environ.get("X402_AGGREGATOR_CONFIG") or DEFAULT_CONFIG
    pay_to = pay_to or os.environ.get("PAY_TO")
    if not pay_to:
        raise SystemExit("set PAY_TO to the address that receives the payments")
    network = network or os.environ.get("NETWORK", DEFAULT_NETWORK)
    price = price or os.environ.get("PRICE", DEFAULT_PRICE)

    facilitator = AggregatorClient.from_config(config)
    server = x402ResourceServer(facilitator)
    server.register(network, ExactEvmServerScheme())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await facilitator.aclose()  # probes, connection pools and the ledger live on this loop

    app = FastAPI(title="weather shop (x402, in-process aggregator)", lifespan=lifespan)

    @app.get("/weather")
    def weather() -> dict[str, str]:
        return {"weather": "sunny"}

    # The SDK asks for /supported here: the client probes every upstream once (bounded by
    # health.timeout_s); background probing starts with the first verify.
    app.middleware("http")(payment_middleware(routes(pay_to, network, price), server))
    return app


def main() -> None:
    import uvicorn

    host = os.environ.get("HOST", "127.0.0.1")
    uvicorn.run(create_app(), host=host, port=int(os.environ.get("PORT", "4021")))


if __name__ == "__main__":
    main()
