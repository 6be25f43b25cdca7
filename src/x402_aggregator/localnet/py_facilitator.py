"""A real x402 facilitator on the official Python SDK, for the local test bed.

The SDK (``x402FacilitatorSync`` + ``FacilitatorWeb3Signer``) verifies and settles EVM ``exact``
(EIP-3009 and Permit2) and ``upto`` payments on a real chain but ships no HTTP server, so this
wraps it in a small FastAPI app the way the SDK's own examples do. Handlers are plain ``def``:
the web3 signer blocks, and FastAPI runs such handlers in its thread pool, where the signer's
nonce lock keeps concurrent settles safe.

With ``--svm-rpc-url`` and ``SVM_FEE_PAYER_KEY`` (base58 keypair) it also settles Solana
``exact`` payments (``FacilitatorKeypairSigner``), paying their fees from that key.

Run: ``FACILITATOR_PRIVATE_KEY=0x.. python -m x402_aggregator.localnet.py_facilitator --port P
--rpc-url URL``; it prints ``ready http://127.0.0.1:P`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import warnings
from typing import Any

import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from x402 import x402FacilitatorSync
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.mechanisms.evm.upto.facilitator import UptoEvmScheme
from x402.mechanisms.svm import FacilitatorKeypairSigner
from x402.mechanisms.svm.exact import register_exact_svm_facilitator
from x402.schemas import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    SchemeNotFoundError,
    parse_payment_payload,
    parse_payment_requirements,
)

from ..protocol import failure_body
from .chain import NETWORK
from .solana import SVM_NETWORK

HOST = "127.0.0.1"
logger = logging.getLogger("x402_aggregator.localnet.py_facilitator")

Parsed = tuple[PaymentPayload | PaymentPayloadV1, PaymentRequirements | PaymentRequirementsV1]


class BadRequest(ValueError):
    """The body is not an x402 verify/settle request."""


def build_facilitator(
    private_key: str,
    rpc_url: str,
    *,
    confirmation_timeout_s: float = 120,
    svm_fee_payer_key: str | None = None,
    svm_rpc_url: str | None = None,
) -> x402FacilitatorSync:
    """The SDK facilitator with the exact EVM scheme on the test bed's chain.

    ``register_exact_evm_facilitator`` also registers every v1 EVM name with this one signer, so
    ``/supported`` over-claims networks it has no RPC for, as real deployments do; kept on purpose.
    """
    signer = FacilitatorWeb3Signer(
        private_key, rpc_url, confirmation_timeout_seconds=confirmation_timeout_s
    )
    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(facilitator, signer, networks=[NETWORK])
    # "exact" covers EIP-3009 and Permit2 payloads; "upto" settles Permit2 up to a maximum.
    facilitator.register([NETWORK], UptoEvmScheme(signer))
    if svm_fee_payer_key and svm_rpc_url:
        svm_signer = FacilitatorKeypairSigner.from_base58(svm_fee_payer_key, rpc_url=svm_rpc_url)
        register_exact_svm_facilitator(facilitator, svm_signer, networks=[SVM_NETWORK])
    return facilitator


def parse_request(body: Any) -> Parsed:
    """Payload and requirements; the version comes from the payload (requirements carry none)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    raw_payload, raw_requirements = body.get("paymentPayload"), body.get("paymentRequirements")
    if not isinstance(raw_payload, dict) or not isinstance(raw_requirements, dict):
        raise BadRequest("paymentPayload and paymentRequirements must be objects")
    try:
        payload = parse_payment_payload(raw_payload)
        requirements = parse_payment_requirements(payload.x402_version, raw_requirements)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise BadRequest(str(error)) from error
    return payload, requirements


def _verify_rejection(reason: str, message: str) -> dict[str, Any]:
    return failure_body("verify", reason, message)


def _settle_rejection(reason: str, message: str, network: str = "") -> dict[str, Any]:
    return failure_body("settle", reason, message, network)


def create_app(facilitator: x402FacilitatorSync) -> FastAPI:
    """HTTP 200 for every business answer, 400 for malformed bodies, 500 for our own faults."""
    app = FastAPI(title="x402 test bed facilitator (Python SDK)", openapi_url=None)

    @app.exception_handler(RequestValidationError)
    def _malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI rejects unparsable JSON before the handler runs; answer in x402's shape.
        message = "request body is not valid JSON"
        if request.url.path.endswith("/settle"):
            return JSONResponse(_settle_rejection("invalid_payload", message), status_code=400)
        return JSONResponse(_verify_rejection("invalid_payload", message), status_code=400)

    @app.post("/verify")
    def verify(body: Any = Body(None)) -> JSONResponse:  # noqa: B008 - FastAPI's idiom
        try:
            payload, requirements = parse_request(body)
        except BadRequest as error:
            return JSONResponse(_verify_rejection("invalid_payload", str(error)), status_code=400)
        try:
            result = facilitator.verify(payload, requirements)
        except SchemeNotFoundError as error:
            return JSONResponse(_verify_rejection("unsupported_scheme", str(error)), 400)
        except Exception as error:  # an RPC fault must not kill the server: report it
            logger.exception("verify failed")
            return JSONResponse(_verify_rejection("unexpected_verify_error", repr(error)), 500)
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True))

    @app.post("/settle")
    def settle(body: Any = Body(None)) -> JSONResponse:  # noqa: B008 - FastAPI's idiom
        try:
            payload, requirements = parse_request(body)
        except BadRequest as error:
            return JSONResponse(_settle_rejection("invalid_payload", str(error)), status_code=400)
        network = str(requirements.network)
        try:
            result = facilitator.settle(payload, requirements)
        except SchemeNotFoundError as error:
            return JSONResponse(_settle_rejection("unsupported_scheme", str(error), network), 400)
        except Exception as error:
            logger.exception("settle failed")
            rejection = _settle_rejection("unexpected_settle_error", repr(error), network)
            return JSONResponse(rejection, status_code=500)
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True))

    @app.get("/supported")
    def supported() -> JSONResponse:
        answer = facilitator.get_supported()
        return JSONResponse(answer.model_dump(by_alias=True, exclude_none=True))

    return app


class _ReadyServer(uvicorn.Server):
    """Prints the ready line only once the socket accepts connections (lifespan runs earlier)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"ready http://{HOST}:{self.config.port}", flush=True)


def serve(app: FastAPI, port: int, *, lifetime_s: float) -> None:
    """Serve on loopback until SIGTERM/SIGINT or until ``lifetime_s`` has passed."""
    config = uvicorn.Config(
        app,
        host=HOST,
        port=port,
        log_level="warning",
        lifespan="off",
        # A settle can block on a receipt for the whole confirmation timeout; don't wait for it.
        timeout_graceful_shutdown=2,
    )
    server = _ReadyServer(config)
    timer = threading.Timer(lifetime_s, lambda: setattr(server, "should_exit", True))
    timer.daemon = True
    timer.start()
    try:
        server.run()
    finally:
        timer.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--confirmation-timeout-s", type=float, default=120)
    parser.add_argument("--lifetime-s", type=float, default=900)
    parser.add_argument("--svm-rpc-url", help="also settle Solana (key in SVM_FEE_PAYER_KEY)")
    args = parser.parse_args(argv)
    # The key comes from the environment so it never shows in `ps` or in logs.
    private_key = os.environ.get("FACILITATOR_PRIVATE_KEY")
    if not private_key:
        print("FACILITATOR_PRIVATE_KEY is not set", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # solana-py's sync Client warns on every use; the SDK's signer is built on it.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    facilitator = build_facilitator(
        private_key,
        args.rpc_url,
        confirmation_timeout_s=args.confirmation_timeout_s,
        svm_fee_payer_key=os.environ.get("SVM_FEE_PAYER_KEY"),
        svm_rpc_url=args.svm_rpc_url,
    )
    serve(create_app(facilitator), args.port, lifetime_s=args.lifetime_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
