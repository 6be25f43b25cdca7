"""A lean pooled HTTP/1.1 client on ``asyncio.Protocol`` and llhttp (``httptools``).

The aggregator's upstream calls are small JSON POSTs to a handful of origins, on every paid
request: measured here, a general client (aiohttp) was the first ceiling of the data path
(issue 15). This one does only what those calls need: keep-alive pools per origin, a new
connection on demand (settles: on a reused connection a reset cannot tell "never arrived" from
"arrived, then the peer died"), TLS through the event loop's SSL, Content-Length and chunked
answers (llhttp decodes), gzip/deflate decoded with the size limit counted after decoding, and
never a redirect followed. Errors are the seam's, keeping "never arrived" apart from "may have".
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

from .errors import ConnectError, ConnectionLost, ConnectTimeout, ReadTimeout
from .transport import KEEPALIVE_S, MAX_ANSWER_BYTES, UpstreamRequest, UpstreamResponse

Origin = tuple[str, str, int]  #: (scheme, host, port)


class Headers(Mapping[str, str]):
    """Response headers, looked up without regard to case (the last value of a repeated one)."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items  # keys lowercased

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class _Decoder:
    """``Content-Encoding`` gzip/deflate, inflated at most to the limit (a zip bomb stays small)."""

    def __init__(self, encoding: str) -> None:
        wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._inflate = zlib.decompressobj(wbits)

    def feed(self, data: bytes, room: int) -> bytes:
        """At most ``room + 1`` decoded bytes (one more than fits says "too large")."""
        out = self._inflate.decompress(data, room + 1)
        if self._inflate.unconsumed_tail and len(out) <= room:
            out += b"\0"  # more would come: enough to say it is too large
        return out


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[UpstreamResponse] | None = None
        self._headers: dict[str, str] = {}
        self._name = b""
        self._body: list[bytes] = []
        self._size = 0
        self._decoder: _Decoder | None = None
        self._headers_done = False
        self._bad_encoding = False
        self.reusable = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods but do not subclass it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self._answer
        if answer is None or answer.done():
            return
        delimited = "content-length" in self._headers or "transfer-encoding" in self._headers
        if self._headers_done and not delimited:
            self._complete(keep=False)  # an answer delimited by the close ends here (HTTP/1.0)
        else:
            answer.set_exception(_Lost(str(exc) if exc else "closed"))

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httptools.HttpParserError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(exc)
        else:
            if self._size > MAX_ANSWER_BYTES:  # cut: what came is the answer, the rest is not
                self._complete(keep=False)

    # llhttp callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name:
            self._name = name
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        else:  # a header value split across packets
            key = self._name.decode("latin-1").lower()
            self._headers[key] += value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        encoding = self._headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = _Decoder(encoding)

    def on_body(self, body: bytes) -> None:
        # Callbacks must not raise (llhttp would report a parse error): past the limit the
        # rest is dropped here and data_received ends the answer.
        room = MAX_ANSWER_BYTES - self._size
        if not body or room < 0:
            return
        if self._decoder is not None:
            try:
                body = self._decoder.feed(body, room)
            except zlib.error:
                body = b""
                self._bad_encoding = True
        body = body[: room + 1]
        self._body.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        if self._bad_encoding:
            self._fail(httptools.HttpParserError("the answer's compression is corrupt"))
            return
        self._complete(keep=self._parser.should_keep_alive())

    # requests

    def request(self, head: bytes, body: bytes | None) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._headers, self._body, self._size = {}, [], 0
        self._decoder, self._headers_done = None, False
        self._bad_encoding = self.reusable = False
        self.transport.write(head + body if body else head)
        return self._answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _complete(self, *, keep: bool) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return
        status = self._parser.get_status_code()
        self.reusable = keep = keep and self._size <= MAX_ANSWER_BYTES
        answer.set_result(UpstreamResponse(status, Headers(self._headers), b"".join(self._body)))
        if not keep:
            self.close()

    def _fail(self, exc: Exception) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.close()


class _Lost(Exception):
    """The connection closed before a complete answer."""


class Http1Transport:
    """Pooled keep-alive connections per origin, and new ones when a request asks for it."""

    def __init__(self, *, pool_size: int = 256, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool_size = pool_size
        self._ssl = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()  # with a request in flight

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        origin, target, credentials = _split(request.url)
        deadline = time.monotonic() + request.timeout_s
        where = f"{request.method} {target.partition('?')[0]}"  # for errors: never the query
        head = _head(request, origin, target, credentials)
        # Like aiohttp, no silent retry on a pooled connection that dies: the request may have
        # been read; the caller's failover rules decide (idle ones are dropped before the
        # peers' own keep-alive ends, so that race is rare).
        connection = None if request.fresh_connection else self._checkout(origin)
        if connection is None:
            connection = await self._connect(origin, request, deadline, where)
        return await self._exchange(connection, origin, head, request, deadline, where)

    async def aclose(self) -> None:
        for connection in [*self._open, *(c for pool in self._idle.values() for c in pool)]:
            connection.close()
        self._idle.clear()
        self._open.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run

    def _checkout(self, origin: Origin) -> _Connection | None:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool:
            connection = pool.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_S:
                return connection
            connection.close()
        return None

    def _checkin(self, origin: Origin, connection: _Connection) -> None:
        pool = self._idle.setdefault(origin, deque())
        if connection.closed or not connection.reusable or len(pool) >= self._pool_size:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        pool.append(connection)

    async def _connect(
        self, origin: Origin, request: UpstreamRequest, deadline: float, where: str
    ) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        budget = min(request.connect_timeout_s, max(0.0, deadline - time.monotonic()))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(budget):
                _, connection = await loop.create_connection(
                    _Connection, host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError:
            raise ConnectTimeout(f"{where}: connect timed out") from None
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ConnectError(f"{where}: cannot connect ({reason})") from None
        return connection

    async def _exchange(
        self,
        connection: _Connection,
        origin: Origin,
        head: bytes,
        request: UpstreamRequest,
        deadline: float,
        where: str,
    ) -> UpstreamResponse:
        answer = connection.request(head, request.body)
        self._open.add(connection)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                response = await answer
        except TimeoutError:
            connection.close()
            raise ReadTimeout(f"{where}: no answer within {request.timeout_s:g} s") from None
        except _Lost:
            raise ConnectionLost(f"{where}: server closed the connection") from None
        except httptools.HttpParserError as exc:
            raise ConnectionLost(f"{where}: malformed answer ({exc})") from None
        except BaseException:  # cancelled (a hedge's loser, a caller gone): never half-used
            connection.close()
            raise
        finally:
            self._open.discard(connection)
        self._checkin(origin, connection)
        return response


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[Origin, str, str | None]:
    """Origin, request target and Basic credentials (an RPC URL's ``user:password@``)."""
    # Upstream URLs come from configuration and repeat on every call: parse each once.
    parts = urlsplit(url)
    scheme, host = parts.scheme, parts.hostname
    if scheme not in ("http", "https") or not host:
        raise ConnectError(f"not an http(s) URL: {parts.scheme}://{parts.netloc}")
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    credentials = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        credentials = "Basic " + base64.b64encode(pair).decode("ascii")
    return (scheme, host, port), target, credentials


def _head(request: UpstreamRequest, origin: Origin, target: str, credentials: str | None) -> bytes:
    scheme, host, port = origin
    name = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    lines = [
        f"{request.method} {target} HTTP/1.1",
        f"Host: {name if port == default else f'{name}:{port}'}",
    ]
    given = {key.lower() for key in request.headers}
    lines.extend(
        f"{key}: {value}" for key, value in request.headers.items() if key.lower() != "host"
    )
    has_body = request.body is not None or request.method in ("POST", "PUT", "PATCH")
    if has_body and "content-length" not in given:
        lines.append(f"Content-Length: {len(request.body or b'')}")
    if credentials is not None and "authorization" not in given:
        lines.append(f"Authorization: {credentials}")
    if "accept-encoding" not in given:
        lines.append("Accept-Encoding: gzip, deflate")
    if request.fresh_connection:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
