"""The HTTP face: the facilitator API (``/verify``, ``/settle``, ``/supported``) and status pages.

Starlette on uvicorn; every answer is JSON, every error x402-shaped, no traceback ever leaves.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from . import __version__, logs, metrics, openapi
from ._types import JSONObject, Operation
from .aggregator import Aggregator, Reply, webhook_url
from .auth import auth_headers
from .config import Config
from .errors import ConfigError, RequestError
from .logs import request_id
from .protocol import (
    INVALID_PAYLOAD,
    REQUEST_TOO_LARGE,
    SETTLEMENT_OUTCOME_UNKNOWN,
    UNEXPECTED_VERIFY_ERROR,
    failure_body,
)

logger = logging.getLogger("x402_aggregator.server")

UPSTREAM_HEADER = "X-Aggregator-Upstream"
ATTEMPTS_HEADER = "X-Aggregator-Attempts"
#: Named when the aggregator itself answered (bad request, unsupported kind, all upstreams failed).
NO_UPSTREAM = "none"


def create_app(config: Config | None = None, *, aggregator: Aggregator | None = None) -> Starlette:
    """Build the ASGI app around an :class:`Aggregator` (made from ``config`` if not given)."""
    if aggregator is None:
        if config is None:
            raise ValueError("create_app needs a config or an aggregator")
        aggregator = Aggregator(config)
    engine = aggregator
    limit = engine.config.server.max_body_bytes

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Learn what upstreams support before the first request; probing goes on in the background.
        await engine.start()
        yield
        # Stop probing and close the upstream connection pools.
        await engine.aclose()

    def payment_endpoint(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
        handle = engine.verify if operation == "verify" else engine.settle

        async def endpoint(request: Request) -> Response:
            rid = request_id(request.headers.get("x-request-id"))
            try:
                body = await _read_body(request, limit)
            except RequestError as exc:
                error = failure_body(operation, exc.reason, exc.message)
                return _reply(Reply(exc.status, orjson.dumps(error)), rid)
            return _reply(await handle(body, request_id=rid), rid)

        return endpoint

    async def supported(request: Request) -> Response:
        return Response(engine.supported(), media_type="application/json")

    async def status(request: Request) -> Response:
        return _json(200, {"version": __version__, **engine.status()})

    async def timeline(request: Request) -> Response:
        operations: dict[str | None, Operation | None] = {
            None: None,
            "verify": "verify",
            "settle": "settle",
        }
        if request.query_params.get("operation") not in operations:
            return _json(400, {"error": "operation must be verify or settle"})
        operation = operations[request.query_params.get("operation")]
        try:
            window_s = min(float(request.query_params.get("window_s", 600)), 3600.0)
            bucket_s = max(float(request.query_params.get("bucket_s", 10)), 1.0)
        except ValueError:
            return _json(400, {"error": "window_s and bucket_s must be numbers"})
        return _json(200, engine.timeline(window_s, bucket_s, operation))

    dashboard_page = (Path(__file__).parent / "dashboard.html").read_bytes()

    api_document = orjson.dumps(openapi.spec())

    async def openapi_json(request: Request) -> Response:
        return Response(api_document, media_type="application/json")

    async def dashboard(request: Request) -> Response:
        return Response(dashboard_page, media_type="text/html; charset=utf-8")

    health_metrics = metrics.HealthCollector(
        lambda: engine.upstreams, lambda: engine.totals["ambiguous_settlements"]
    )

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.exposition(health_metrics)
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    admin_token = _admin_token(engine.config)

    def admin_endpoint(drain: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return _admin(request, drain)

        return endpoint

    def _admin(request: Request, drain: bool) -> Response:
        """Drain an upstream (no new traffic) or enable it again; needs the admin token."""
        if admin_token is None:
            return _json(404, {"error": "the admin API is off: set admin.token_env"})
        supplied = request.headers.get("authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {admin_token}".encode()):
            return Response(
                orjson.dumps({"error": "a valid admin bearer token is required"}),
                401,
                {"WWW-Authenticate": "Bearer"},
                media_type="application/json",
            )
        name = request.path_params["name"]
        if not engine.drain(name, drained=drain):
            return _json(404, {"error": f"no upstream named {name!r}"})
        upstream = engine.upstream(name)
        assert upstream is not None
        state, reason = upstream.health.state()
        return _json(200, {"name": name, "state": state, "reason": reason})

    routes = [
        Route("/verify", payment_endpoint("verify"), methods=["POST"]),
        Route("/settle", payment_endpoint("settle"), methods=["POST"]),
        Route("/supported", supported, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/status/timeline", timeline, methods=["GET"]),
        # The name the seed project's monitoring page used.
        Route("/api/facilitator-status", status, methods=["GET"]),
        Route("/", dashboard, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/admin/upstreams/{name}/drain", admin_endpoint(True), methods=["POST"]),
        Route("/admin/upstreams/{name}/enable", admin_endpoint(False), methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.aggregator = engine
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(REQUEST_TOO_LARGE, _too_large(limit), status=413)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(REQUEST_TOO_LARGE, _too_large(limit), status=413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(
            INVALID_PAYLOAD, "the client disconnected before sending the whole body"
        ) from None
    return b"".join(chunks)


def _admin_token(config: Config) -> str | None:
    """The admin bearer token, read once at start; None turns the admin API off."""
    variable = config.admin.token_env
    if variable is None:
        return None
    token = os.environ.get(variable, "")
    if not token:
        raise ConfigError(
            f"admin.token_env names environment variable {variable}, which is not set"
        )
    return token


def check_secrets(config: Config) -> None:
    """Fail now, not in a worker, if a secret the configuration names is not set."""
    _admin_token(config)
    webhook_url(config.alerts)
    for upstream in config.upstreams:
        if upstream.enabled:
            auth_headers(upstream)


def _too_large(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


def _reply(reply: Reply, rid: str) -> Response:
    headers = {
        UPSTREAM_HEADER: reply.upstream or NO_UPSTREAM,
        ATTEMPTS_HEADER: str(reply.attempts),
        "X-Request-Id": rid,
    }
    if reply.extension_responses:
        headers["EXTENSION-RESPONSES"] = reply.extension_responses
    return Response(reply.body, reply.status, headers, media_type="application/json")


def _json(status: int, body: JSONObject) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _json(exc.status_code, {"error": exc.detail, "status": exc.status_code})


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to our log, never to the caller.
    logger.exception("internal error on %s %s", request.method, request.url.path)
    path = request.url.path
    message = "internal error in the aggregator"
    if path == "/settle":
        # A settle that crashed here may already have been forwarded: say so, never "failed".
        body = failure_body("settle", SETTLEMENT_OUTCOME_UNKNOWN, message)
    elif path == "/verify":
        body = failure_body("verify", UNEXPECTED_VERIFY_ERROR, message)
    else:
        body = {"error": message}
    return _json(500, body)


def app_from_environment() -> Starlette:
    """App factory for uvicorn workers: the configuration comes from ``X402_AGGREGATOR_*``."""
    from .config import load_config

    config = load_config()
    logs.configure(config.server.log_level, config.server.log_format)
    return create_app(config)
