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
from .access import AccessControl, log_refusal
from .aggregator import Aggregator
from .errors import RequestError
from .logs import request_id
from .protocol import (
    INVALID_PAYLOAD,
    REQUEST_TOO_LARGE,
    SETTLEMENT_OUTCOME_UNKNOWN,
    UNEXPECTED_VERIFY_ERROR,
    failure_body,
)
from .replies import Reply

logger = logging.getLogger("x402_aggregator.server")

UPSTREAM_HEADER = b"x-aggregator-upstream"
ATTEMPTS_HEADER = b"x-aggregator-attempts"
#: Named when the aggregator itself answered (bad request, unsupported kind, all upstreams failed).
NO_UPSTREAM = b"none"
PATHS: dict[str, Operation] = {"/verify": "verify", "/settle": "settle"}
_JSON = (b"content-type", b"application/json")
MAX_IDEMPOTENCY_KEY = 255


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


class PaymentEndpoints:
    """Serves the payment paths itself and passes every other request to ``app``."""

    def __init__(
        self, engine: Aggregator, app: ASGIApp, access: AccessControl | None = None
    ) -> None:
        self.engine = engine
        self.app = app
        self._limit = engine.config.server.max_body_bytes
        self._access = access
        # Chosen once: without API keys the hot path does no access work at all.
        self._serve: Callable[[Operation, Scope, Receive, Send], Awaitable[None]] = (
            self._payment if access is None else self._guarded
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = PATHS.get(scope["path"]) if scope["type"] == "http" else None
        if operation is None:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            body = orjson.dumps({"error": "Method Not Allowed", "status": 405})
            await _send(send, 405, body, [(b"allow", b"POST")])
        else:
            await self._serve(operation, scope, receive, send)

    async def _guarded(
        self, operation: Operation, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Check the caller's API key and rate before reading or forwarding anything."""
        assert self._access is not None
        headers = dict(scope["headers"])
        verdict = self._access.check(headers.get(b"authorization"), headers.get(b"x-api-key"))
        if isinstance(verdict, str):
            await self._payment(operation, scope, receive, send, verdict)
            return
        rid = request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        log_refusal(verdict, scope["path"], rid)
        body = orjson.dumps(failure_body(operation, verdict.reason, verdict.message))
        extra = [
            (UPSTREAM_HEADER, NO_UPSTREAM),
            (ATTEMPTS_HEADER, b"0"),
            (b"x-request-id", rid.encode()),
            *verdict.headers,
        ]
        await _send(send, verdict.status, body, extra)

    async def _payment(
        self,
        operation: Operation,
        scope: Scope,
        receive: Receive,
        send: Send,
        caller: str | None = None,
    ) -> None:
        """Read, route and answer one payment; ``caller`` is the API key's name, if any."""
        headers = dict(scope["headers"])
        rid = request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        try:
            body = await _read_body(receive, headers.get(b"content-length"), self._limit)
            if operation == "settle":
                key = _idempotency_key(headers.get(b"idempotency-key"))
                reply = await self.engine.settle(
                    body, request_id=rid, idempotency_key=key, caller=caller
                )
            else:
                reply = await self.engine.verify(body, request_id=rid, caller=caller)
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
            *reply.headers,
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


def _idempotency_key(value: bytes | None) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 visible ASCII characters (Stripe's limit)."""
    if value is None:
        return None
    if not 0 < len(value) <= MAX_IDEMPOTENCY_KEY or not all(0x21 <= b <= 0x7E for b in value):
        raise RequestError(
            INVALID_PAYLOAD,
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters",
        )
    return "header:" + value.decode("ascii")


def _too_large(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
