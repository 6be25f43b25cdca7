"""A Flask shop on the official x402 SDK's sync middleware, paid through x402-aggregator.

Run it:

    PAY_TO=0xYourAddress python examples/flask_app.py                 # the shop on :4021
    curl -i http://127.0.0.1:4021/weather                             # 402 Payment Required

Needs ``pip install x402-aggregator 'x402[evm,flask]'`` (or this repository's ``.[test]``).

The SDK's Flask middleware takes an ``x402ResourceServerSync``, which accepts any synchronous
facilitator client, so both ways work and this file picks one from the environment:

* in-process (the default): ``AggregatorClientSync.from_config(X402_AGGREGATOR_CONFIG)``, the
  aggregator's engine on an event loop in a background thread; no separate service to run;
* through a running aggregator, when ``FACILITATOR_URL`` is set (e.g. http://127.0.0.1:4020,
  after ``x402-aggregator serve``): the SDK's own ``HTTPFacilitatorClientSync``.

Environment:
    X402_AGGREGATOR_CONFIG  the aggregator's YAML file (default: examples/aggregator.yaml)
    FACILITATOR_URL         use a running aggregator instead of the in-process one
    PAY_TO                  the address that receives the payments (required)
    NETWORK                 CAIP-2 network (default eip155:84532, Base Sepolia)
    PRICE                   what GET /weather costs (default $0.01, paid in the network's USDC)
    HOST, PORT              where the shop listens (default 127.0.0.1:4021)

``app.run`` below is Flask's development server; behind gunicorn, build the app with
``create_app()`` and call ``close(app)`` at shutdown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from x402 import x402ResourceServerSync
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync
from x402.http.middleware.flask import PaymentMiddleware
from x402.mechanisms.evm.exact import ExactEvmServerScheme

from x402_aggregator import AggregatorClientSync

DEFAULT_CONFIG = Path(__file__).with_name("aggregator.yaml")
DEFAULT_NETWORK = "eip155:84532"
DEFAULT_PRICE = "$0.01"
#: Where the app keeps its facilitator client (``app.extensions[FACILITATOR]``).
FACILITATOR = "x402_facilitator"

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
    facilitator_url: str | None = None,
    pay_to: str | None = None,
    network: str | None = None,
    price: Price | None = None,
) -> Flask:
    """The shop; arguments left out are read from the environment (see the module doc)."""
    facilitator_url = facilitator_url or os.environ.get("FACILITATOR_URL")
    pay_to = pay_to or os.environ.get("PAY_TO")
    if not pay_to:
        raise SystemExit("set PAY_TO to the address that receives the payments")
    network = network or os.environ.get("NETWORK", DEFAULT_NETWORK)
    price = price or os.environ.get("PRICE", DEFAULT_PRICE)

    facilitator: AggregatorClientSync | HTTPFacilitatorClientSync
    if facilitator_url:
        facilitator = HTTPFacilitatorClientSync(FacilitatorConfig(url=facilitator_url))
    else:
        config = config or os.environ.get("X402_AGGREGATOR_CONFIG") or DEFAULT_CONFIG
        facilitator = AggregatorClientSync.from_config(config)
    server = x402ResourceServerSync(facilitator)
    server.register(network, ExactEvmServerScheme())

    app = Flask(__name__)
    app.extensions[FACILITATOR] = facilitator

    @app.get("/weather")
    def weather() -> dict[str, str]:
        return {"weather": "sunny"}

    # Wraps app.wsgi_app; asks the facilitator for /supported right away.
    PaymentMiddleware(app, routes(pay_to, network, price), server)
    return app


def close(app: Flask) -> None:
    """Stop the facilitator client: the in-process engine's loop thread and its ledger."""
    app.extensions[FACILITATOR].close()


def main() -> None:
    app = create_app()
    try:
        app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "4021")))
    finally:
        close(app)


if __name__ == "__main__":
    main()
