"""Fault-injecting fake x402 facilitator for tests, benchmarks and demos.

It is a real HTTP server on a real socket, so clients exercise their actual connect, read and
timeout paths (resets, stalls and half-sent bodies cannot be faked at a higher level). It runs on
its own event loop in a background thread, so sync tests and async tests (which own their loop)
drive it alike. Each op has a `Behaviour`, switchable from Python or, for a fake running in another
process, over the `/_fake/*` control API.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import hashlib
import json
import signal
import socket
import struct
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, Literal, NoReturn, get_args

from aiohttp import web

__all__ = ["Behaviour", "FakeFacilitator", "Mode", "Received", "main"]

Op = Literal["verify", "settle", "supported", "discovery"]
Dialect = Literal["spec", "x402rs", "minimal", "error"]
#: The ops counted in `calls` and switched by `set("*")`; the optional Bazaar catalogue
#: (`/discovery/resources`) is counted in `discovery_calls` and switched only by name.
OPS: tuple[Op, ...] = ("verify", "settle", "supported")
_ALL_OPS: tuple[Op, ...] = (*OPS, "discovery")
DEFAULT_KINDS: tuple[dict[str, Any], ...] = (
    {"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
    {"x402Version": 1, "scheme": "exact", "network": "base-sepolia"},
)
_ROUTES: dict[str, tuple[str, Op]] = {
    "/verify": ("POST", "verify"),
    "/settle": ("POST", "settle"),
    "/supported": ("GET", "supported"),
    "/discovery/resources": ("GET", "discovery"),
}
_GARBAGE = b"<html><body>502 Bad Gateway</body></html>"
_BAD_PAYLOAD: dict[Op, dict[str, Any]] = {
    "verify": {"isValid": False, "invalidReason": "invalid_payload"},
    "settle": {
        "success": False,
        "errorReason": "invalid_payload",
        "transaction": "",
        "network": "",
    },
}
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# Upper bound for aiohttp's graceful drain; stop() aborts connections first, so it is rarely hit.
_DRAIN_TIMEOUT_S = 0.5


class Mode(enum.StrEnum):
    """What the fake does with a call; see `Behaviour` for the knobs."""

    OK = "ok"  # a real facilitator's answer
    SLOW = "slow"  # sleep delay_s, then OK
    HTTP500 = "http500"  # 500 JSON error
    HTTP429 = "http429"  # 429 JSON error with Retry-After: 1
    HANG = "hang"  # read the request, never answer
    RESET = "reset"  # read the request, then TCP RST with no response bytes
    GARBAGE = "garbage"  # 200 text/html proxy error page
    PARTIAL = "partial"  # headers + half the body of a longer Content-Length, then stall
    INVALID = "invalid"  # business rejection in `dialect`, with HTTP `status`
    PENDING = "pending"  # settle: success:false settlement_pending with a tx hash; else OK


@dataclass(slots=True)
class Behaviour:
    """How one op answers; `times` limits it to the next N calls, then the op reverts to OK."""

    mode: Mode = Mode.OK
    delay_s: float = 0.0
    status: int = 200
    reason: str = "invalid_exact_evm_payload_signature"
    message: str | None = "signature does not match (injected)"
    dialect: Dialect = "spec"
    times: int | None = None
    #: Only payments on this network get the behaviour (others are answered OK): a facilitator
    #: whose RPC for one chain is broken while it serves the others well.
    network: str | None = None

    def __post_init__(self) -> None:
        # Validated here so that a typo over the control API fails the call, not a later request.
        self.mode = Mode(self.mode)
        if self.dialect not in get_args(Dialect):
            raise ValueError(f"unknown dialect {self.dialect!r}")
        if self.delay_s < 0 or (self.times is not None and self.times < 0):
            raise ValueError("delay_s and times must not be negative")
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"bad HTTP status {self.status!r}")


@dataclass(frozen=True, slots=True)
class Received:
    """One call as it arrived; header names are lower-cased."""

    op: str
    body: bytes
    headers: dict[str, str]


async def _forever() -> NoReturn:
    # Only cancellation ends this: client disconnect (handler_cancellation) or stop().
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


def _dig(obj: Any, *keys: str) -> str:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, str) else ""


def _requested_network(body: bytes) -> str:
    try:
        return _dig(json.loads(body), "paymentRequirements", "network")
    except ValueError:
        return ""


def _rejection(op: Op, b: Behaviour, payer: str, network: str) -> dict[str, Any]:
    r, m = b.reason, b.message
    if op == "verify":
        if b.dialect == "spec":
            msg = {} if m is None else {"invalidMessage": m}
            return {"isValid": False, "invalidReason": r, **msg, "payer": payer}
        if b.dialect == "x402rs":
            msg = {} if m is None else {"invalidReasonDetails": m}
            return {"isValid": False, "invalidReason": r, **msg, "payer": ""}
        if b.dialect == "minimal":
            return {"isValid": False, "invalidReason": r}
        return {"isValid": False, "error": r}
    if b.dialect == "spec":
        msg = {} if m is None else {"errorMessage": m}
        return {
            "success": False,
            "errorReason": r,
            **msg,
            "transaction": "",
            "network": network,
            "payer": payer,
        }
    if b.dialect == "x402rs":
        return {"success": False, "errorReason": r, "network": "", "transaction": "", "payer": ""}
    if b.dialect == "minimal":
        return {"success": False, "errorReason": r}
    return {"success": False, "error": r}


def _reset(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns close() into an RST: the client sees "connection reset" and no bytes,
        # like a crashed upstream or a middlebox dropping the flow.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FakeFacilitator:
    """A facilitator on 127.0.0.1 whose answers (and failures) a test chooses per op."""

    def __init__(
        self,
        name: str = "fake",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        kinds: list[dict[str, Any]] | None = None,
        signers: dict[str, list[str]] | None = None,
        extensions: list[str] | None = None,
        latency_s: float = 0.0,
        discovery: list[dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.kinds = [dict(k) for k in DEFAULT_KINDS] if kinds is None else kinds
        derived = "0x" + hashlib.sha256(name.encode()).hexdigest()[:40]
        self.signers = {"eip155:*": [derived]} if signers is None else signers
        self.extensions = [] if extensions is None else extensions
        self.latency_s = latency_s
        self.calls: dict[str, int] = dict.fromkeys(OPS, 0)
        self.discovery_calls = 0
        self.received: list[Received] = []
        #: The Bazaar catalogue served at `/discovery/resources`; None: 404, like most facilitators.
        self._discovery = None if discovery is None else list(discovery)
        self._port = port
        self._lock = threading.Lock()  # calls, received, behaviours: shared with the server thread
        self._lifecycle = threading.Lock()
        self._behaviours: dict[Op, Behaviour] = {op: Behaviour() for op in _ALL_OPS}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def __enter__(self) -> FakeFacilitator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FakeFacilitator({self.name!r}, url={self.url!r})"

    def start(self) -> FakeFacilitator:
        """Listen and serve in a background thread; returns once connects succeed."""
        with self._lifecycle:
            if self._thread is not None:
                return self
            sock = self._bind()
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name=f"fake-{self.name}", daemon=True
            )
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self._serve(sock), loop).result(_START_TIMEOUT_S)
            except BaseException:
                sock.close()
                _halt(loop, thread)
                raise
            self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection, hung ones included. Idempotent."""
        with self._lifecycle:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            self._loop = self._thread = None
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_STOP_TIMEOUT_S)
            finally:
                _halt(loop, thread)

    def set(
        self,
        op: Literal["verify", "settle", "supported", "discovery", "*"],
        mode: Mode | str = Mode.OK,
        **params: Any,
    ) -> None:
        """Switch `op` ("*": all but discovery) to `mode`; `params`: other `Behaviour` fields."""
        if op != "*" and op not in _ALL_OPS:
            raise ValueError(f"unknown op {op!r}")
        behaviour = Behaviour(Mode(mode), **params)
        if behaviour.times == 0:
            behaviour = Behaviour()
        with self._lock:
            for one in OPS if op == "*" else (op,):
                self._behaviours[one] = behaviour

    def behaviour(self, op: Op) -> Behaviour:
        """The current behaviour of `op` (a copy; `times` shows the calls left)."""
        with self._lock:
            return replace(self._behaviours[op])

    def reset_calls(self) -> None:
        """Forget traffic so far: zero `calls` (same dict object) and clear `received`."""
        with self._lock:
            self.calls.update(dict.fromkeys(OPS, 0))
            self.discovery_calls = 0
            self.received.clear()

    def set_discovery(self, items: list[dict[str, Any]] | None) -> None:
        """Serve `items` at `/discovery/resources` (None: answer 404, no discovery)."""
        with self._lock:
            self._discovery = None if items is None else list(items)

    # --- server thread ---------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            # A restart must get the same port even while connections closed by the previous
            # run sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        # handler_cancellation: a client giving up on a HANG/PARTIAL call frees its handler.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=_DRAIN_TIMEOUT_S)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def _shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in runner.sites:
            await site.stop()
        # asyncio's Server.close() leaves accepted connections open (3.11); abort them so that
        # hung calls end now instead of after a graceful drain.
        for conn in runner.server.connections if runner.server else []:
            if conn.transport is not None:
                conn.transport.abort()
        await runner.cleanup()
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            content_type="application/json",
            headers={"X-Fake-Facilitator": self.name, **(headers or {})},
        )

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            return await self._control(request)
        route = _ROUTES.get(request.path)
        if route is None:
            return self._json(404, {"error": f"no route {request.path}"})
        method, op = route
        if request.method != method:
            return self._json(405, {"error": f"use {method}"}, {"Allow": method})
        body = await request.read()
        with self._lock:
            if op == "discovery":
                self.discovery_calls += 1
            else:
                self.calls[op] += 1
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.received.append(Received(op, body, headers))
            if op == "discovery" and self._discovery is None:
                return self._json(404, {"error": f"no route {request.path}"})
            b = self._behaviours[op]
            if b.network is not None and _requested_network(body) != b.network:
                b = Behaviour()
            elif b.times is not None:
                left = b.times - 1
                self._behaviours[op] = Behaviour() if left <= 0 else replace(b, times=left)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        return await self._answer(op, b, body, request)

    async def _answer(
        self, op: Op, b: Behaviour, body: bytes, request: web.BaseRequest
    ) -> web.StreamResponse:
        if b.mode is Mode.SLOW:
            await asyncio.sleep(b.delay_s)
        elif b.mode is Mode.HTTP500:
            return self._json(500, {"error": "internal error (injected)"})
        elif b.mode is Mode.HTTP429:
            return self._json(429, {"error": "rate limited (injected)"}, {"Retry-After": "1"})
        elif b.mode is Mode.HANG:
            await _forever()
        elif b.mode is Mode.RESET:
            _reset(request)
            await _forever()
        elif b.mode is Mode.GARBAGE:
            headers = {"X-Fake-Facilitator": self.name}
            return web.Response(body=_GARBAGE, content_type="text/html", headers=headers)
        if op == "supported":
            answer: Any = {
                "kinds": self.kinds,
                "extensions": self.extensions,
                "signers": self.signers,
            }
            status = 200
        elif op == "discovery":
            status, answer = self._discovery_page(request.query)
        else:
            status, answer = self._payment_answer(op, b, body)
        if b.mode is Mode.PARTIAL:
            return await self._partial(request, status, json.dumps(answer).encode())
        return self._json(status, answer)

    def _payment_answer(self, op: Op, b: Behaviour, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return 400, _BAD_PAYLOAD[op]
        pp = parsed.get("paymentPayload")
        payer = _dig(pp, "payload", "authorization", "from")
        network = (
            _dig(parsed, "paymentRequirements", "network")
            or _dig(pp, "accepted", "network")
            or _dig(pp, "network")
        )
        if b.mode is Mode.INVALID:
            return b.status, _rejection(op, b, payer, network)
        if op == "verify":
            return 200, {"isValid": True, "payer": payer}
        # Deterministic per fake and payload, so tests can tell which upstream settled.
        tx = "0x" + hashlib.sha256(self.name.encode() + body).hexdigest()
        if b.mode is Mode.PENDING:
            return 200, {
                "success": False,
                "errorReason": "settlement_pending",
                "transaction": tx,
                "network": network,
                "payer": payer,
            }
        return 200, {"success": True, "transaction": tx, "network": network, "payer": payer}

    def _discovery_page(self, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """One page of the catalogue as the spec lists it: `type` filter, `limit`, `offset`."""
        try:
            limit, offset = int(query.get("limit", "20")), int(query.get("offset", "0"))
        except ValueError:
            return 400, {"error": "limit and offset must be integers"}
        if not 1 <= limit <= 100 or offset < 0:
            return 400, {"error": "limit must be from 1 to 100 and offset at least 0"}
        with self._lock:
            items = list(self._discovery or [])
        if "type" in query:
            items = [item for item in items if item.get("type") == query["type"]]
        return 200, {
            "x402Version": 2,
            "items": items[offset : offset + limit],
            "pagination": {"limit": limit, "offset": offset, "total": len(items)},
        }

    async def _partial(self, request: web.BaseRequest, status: int, body: bytes) -> NoReturn:
        response = web.StreamResponse(status=status, headers={"X-Fake-Facilitator": self.name})
        response.content_type = "application/json"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await _forever()

    async def _control(self, request: web.BaseRequest) -> web.StreamResponse:
        where = (request.method, request.path)
        if where == ("GET", "/_fake/calls"):
            with self._lock:
                return self._json(200, dict(self.calls))
        if where == ("POST", "/_fake/reset"):
            self.reset_calls()
            return self._json(200, {"ok": True})
        if where == ("POST", "/_fake/discovery"):
            try:
                params = json.loads(await request.read())
            except ValueError:
                params = None
            if not isinstance(params, dict) or not isinstance(params.get("items"), list | None):
                return self._json(400, {"ok": False, "error": 'expected {"items": [...] or null}'})
            self.set_discovery(params.get("items"))
            return self._json(200, {"ok": True})
        if where != ("POST", "/_fake/behaviour"):
            return self._json(404, {"error": f"no control route {request.method} {request.path}"})
        try:
            params = json.loads(await request.read())
            if not isinstance(params, dict) or "op" not in params:
                raise ValueError('expected a JSON object with "op"')
            self.set(params.pop("op"), params.pop("mode", Mode.OK), **params)
        except (TypeError, ValueError) as exc:
            return self._json(400, {"ok": False, "error": str(exc)})
        return self._json(200, {"ok": True})


def _halt(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(_STOP_TIMEOUT_S)
    if not thread.is_alive():  # closing a loop that still runs would raise
        loop.close()


def main(argv: list[str] | None = None) -> int:
    """Run one fake in the foreground (for benchmarks and the demo); prints `ready <url>`."""
    parser = argparse.ArgumentParser(prog="python -m x402_aggregator.localnet.fake_facilitator")
    parser.add_argument("--name", default="fake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--lifetime-s", type=float, default=3600.0)
    args = parser.parse_args(argv)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    # Installed before listening so a supervisor's early SIGTERM still exits cleanly.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fake = FakeFacilitator(
        args.name, host=args.host, port=args.port, latency_s=args.latency_ms / 1000
    )
    with fake:
        print(f"ready {fake.url}", flush=True)
        # Bounded, so a fake orphaned by a crashed benchmark or demo does not live on forever.
        done.wait(args.lifetime_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
