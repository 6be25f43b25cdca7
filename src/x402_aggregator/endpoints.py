"""``POST /verify`` and ``POST /settle`` as a plain ASGI app: the hot path, without a framework.

Every paid request of every resource server passes here, so it skips Starlette's request and
response objects and middleware stack (about a sixth of the CPU per request when profiled).
Everything else (status, metrics, dashboard, admin) stays on Starlette.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._types import Operation
from .aggregator import Aggregator, Reply
from .errors import RequestError
from .logs import request_id
from .protocol import (
    INVALID_PAYLOAD,
    REQUEST_TOO_LARGE,
    SETTLEMENT_OUTCOME_UNKNOWN,
    UNEXPECTED_VERIFY_ERROR,
    failure_body,
)

logger = logging.getLogger("x402_aggregator.server")

UPSTREAM_HEADER = b"x-aggregator-upstream"
ATTEMPTS_HEADER = b"x-aggregator-attempts"
#: Named when the aggregator itself answered (bad request, unsupported kind, all upstreams failed).
NO_UPSTREAM = b"none"
PATHS: dict[str, Operation] = {"/verify": "verify", "/settle": "settle"}
_JSON = (b"content-type", b"application/json")


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


class PaymentEndpoints:
    """Serves the payment paths itself and passes every other request to ``app``."""

    def __init__(self, engine: Aggregator, app: ASGIApp) -> None:
        self.engine = engine
        self.app = app
        self._limit = engine.config.server.max_body_bytes
        self._handlers: dict[Operation, Callable[..., Awaitable[Reply]]] = {
            "verify": engine.verify,
            "settle": engine.settle,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = PATHS.get(scope["path"]) if scope["type"] == "http" else None
        if operation is None:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            body = orjson.dumps({"error": "Method Not Allowed", "status": 405})
            await _send(send, 405, body, [(b"allow", b"POST")])
        else:
            await self._payment(operation, scope, receive, send)

    async def _payment(
        self, operation: Operation, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = dict(scope["headers"])
        rid = request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        try:
            body = await _read_body(receive, headers.get(b"content-length"), self._limit)
            reply = await self._handlers[operation](body, request_id=rid)
        except RequestError as exc:
            error = failure_body(operation, exc.reason, exc.message)
            reply = Reply(exc.status, orjson.dumps(error))
        except _Disconnected:
            return
        except Exception:
            # The traceback goes to our log, never to the caller. A settle that crashed here
            # may already have been forwarded: say so, never "failed".
            logger.exception("internal error on POST /%s (request %s)", operation, rid)
            message = "internal error in the aggregator"
            reason = (
                SETTLEMENT_OUTCOME_UNKNOWN if operation == "settle" else UNEXPECTED_VERIFY_ERROR
            )
            reply = Reply(500, orjson.dumps(failure_body(operation, reason, message)))
        extra = [
            (UPSTREAM_HEADER, reply.upstream.encode() if reply.upstream else NO_UPSTREAM),
            (ATTEMPTS_HEADER, str(reply.attempts).encode()),
            (b"x-request-id", rid.encode()),
        ]
        if reply.extension_responses and reply.extension_responses.isascii():
            # Base64 by the spec; anything else is not worth turning a settled payment into a 500.
            extra.append((b"extension-responses", reply.extension_responses.encode()))
        await _send(send, reply.status, reply.body, extra)


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without buffering them."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(REQUEST_TOO_LARGE, _too_large(limit), status=413)
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(REQUEST_TOO_LARGE, _too_large(limit), status=413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if not body:
        raise RequestError(INVALID_PAYLOAD, "the request has no body")
    return body


def _too_large(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
