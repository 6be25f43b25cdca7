"""JSON answers of the Starlette side, and what an exception raised there turns into."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ._types import JSONObject

# The server's logger, whichever of its modules logs (as in endpoints.py).
logger = logging.getLogger("x402_aggregator.server")


def json_response(status: int, body: JSONObject) -> Response:
    """Answer ``body`` as JSON with ``status``."""
    return Response(orjson.dumps(body), status, media_type="application/json")


async def http_error(request: Request, exc: Exception) -> Response:
    """Answer Starlette's own errors (404, 405) in our JSON shape."""
    assert isinstance(exc, HTTPException)
    return json_response(exc.status_code, {"error": exc.detail, "status": exc.status_code})


async def ledger_error(request: Request, exc: Exception) -> Response:
    """Answer 503 when the settlement ledger cannot be read."""
    logger.error("ledger unavailable on %s %s: %s", request.method, request.url.path, exc)
    return json_response(503, {"error": "the settlement ledger is unavailable"})


async def internal_error(request: Request, exc: Exception) -> Response:
    """Answer 500 for anything else, logging the traceback."""
    # The traceback goes to our log, never to the caller.
    logger.exception("internal error on %s %s", request.method, request.url.path)
    return json_response(500, {"error": "internal error in the aggregator"})
