"""The one-method seam between the aggregator and the network.

``Transport.send`` takes an :class:`UpstreamRequest` and returns an :class:`UpstreamResponse` or
raises one of our :class:`~x402_aggregator.errors.TransportError` subclasses, which say whether
the request can have reached the upstream. Production uses :class:`~.http1.Http1Transport`
(a lean client on asyncio + llhttp: 1.5x aiohttp's verify throughput through the aggregator,
measured here); :class:`AiohttpTransport` stays selectable (``server.upstream_client``) and
tests may plug in :class:`HandlerTransport`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from .errors import ConnectError, ConnectionLost, ConnectTimeout, ReadTimeout, TransportError

#: Answers larger than this are cut off; no facilitator answer comes close.
MAX_ANSWER_BYTES = 1024 * 1024
#: Below the 5 s keep-alive of uvicorn and Node: we rarely reuse a connection the peer is closing.
KEEPALIVE_S = 4.0


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    #: Open a new connection instead of reusing a pooled one. Settles use this: on a reused
    #: connection a reset cannot tell "never arrived" from "arrived, then the peer died".
    fresh_connection: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)


class Transport(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send one request; raise a ``TransportError`` when no complete answer came back."""
        ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """Pooled aiohttp sessions: one with keep-alive, one that always opens a new connection."""

    def __init__(self, *, pool_size: int = 256) -> None:
        self._pool_size = pool_size
        self._pooled: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None

    def _session(self, fresh: bool) -> aiohttp.ClientSession:
        # Sessions are created lazily because aiohttp binds them to the running event loop.
        if fresh:
            if self._fresh is None:
                self._fresh = _make_session(aiohttp.TCPConnector(force_close=True, limit=0))
            return self._fresh
        if self._pooled is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, keepalive_timeout=KEEPALIVE_S, ttl_dns_cache=60
            )
            self._pooled = _make_session(connector)
        return self._pooled

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        timeout = _timeout(request.timeout_s, request.connect_timeout_s)
        session = self._session(request.fresh_connection)
        with _map_errors(request):
            async with session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                return UpstreamResponse(response.status, response.headers, await _body(response))

    async def aclose(self) -> None:
        for session in (self._pooled, self._fresh):
            if session is not None:
                await session.close()
        self._pooled = self._fresh = None


@functools.lru_cache(maxsize=256)
def _timeout(total_s: float, connect_s: float) -> aiohttp.ClientTimeout:
    # Budgets repeat (each upstream's, less what a deadline has used): one object per pair.
    return aiohttp.ClientTimeout(total=total_s, sock_connect=min(connect_s, total_s))


async def _body(response: aiohttp.ClientResponse) -> bytes:
    """The whole answer, to EOF; past ``MAX_ANSWER_BYTES`` it is cut (and so is no answer).

    ``StreamReader.read(n)`` returns what has arrived so far, not the whole body: an answer
    sent in two packets would be cut in half.
    """
    declared = response.content_length
    if declared is not None and declared <= MAX_ANSWER_BYTES:
        return await response.read()  # to the declared length, in one await
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER_BYTES:
        chunk = await response.content.read(64 * 1024)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[: MAX_ANSWER_BYTES + 1]


def _make_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        skip_auto_headers=("User-Agent",),
        auto_decompress=True,
        raise_for_status=False,
    )


@contextmanager
def _map_errors(request: UpstreamRequest) -> Iterator[None]:
    """Translate aiohttp's errors into ours, keeping "never arrived" apart from "may have"."""
    try:
        yield
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        raise _mapped(exc, request) from exc


def _mapped(exc: BaseException, request: UpstreamRequest) -> TransportError:
    # Order matters: aiohttp's connect errors subclass its generic OS and timeout errors.
    where = f"{request.method} {urlsplit(request.url).path or '/'}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(f"{where}: connect timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(f"{where}: cannot connect ({exc.os_error.strerror or exc})")
    if isinstance(exc, TimeoutError):
        return ReadTimeout(f"{where}: no answer within {request.timeout_s:g} s")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ConnectionLost(f"{where}: server closed the connection")
    return ConnectionLost(f"{where}: {type(exc).__name__}: {exc}")


Handler = Callable[[UpstreamRequest], Awaitable[UpstreamResponse]]


class HandlerTransport:
    """A transport that calls a function instead of the network, for fast unit tests."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        return await self._handler(request)

    async def aclose(self) -> None:
        await asyncio.sleep(0)
