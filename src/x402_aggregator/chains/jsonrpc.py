"""A small, read-only JSON-RPC client on the lean HTTP/1.1 client: what every chain reader is
built on.

One connection pool, one timeout per call, answers bounded after decoding (1 MiB: a hostile
RPC cannot inflate one into memory), and every failure a
:class:`~x402_aggregator.errors.ChainError` naming only the RPC's origin: RPC URLs often carry
API keys in their path or query.
"""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..errors import ChainError, TransportError
from ..http1 import Http1Transport
from ..transport import UpstreamRequest

_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def origin(url: str) -> str:
    """``scheme://host:port`` only: paths, queries and userinfo may hold API keys."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("rpc_url must be an http(s) URL with a host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


class JsonRpcReader:
    """The JSON-RPC plumbing of a chain reader; subclasses add their chain's calls."""

    def __init__(self, rpc_url: str, *, timeout_s: float = 5.0) -> None:
        self._url = rpc_url
        self._origin = origin(rpc_url)
        self._timeout_s = timeout_s
        self._client: Http1Transport | None = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._origin!r})"

    async def aclose(self) -> None:
        """Close the connections; a later call opens new ones."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _error(self, method: str, problem: str) -> ChainError:
        return ChainError(f"{method} at {self._origin}: {problem}")

    async def _call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; every failure becomes a ChainError naming only the host."""
        if self._client is None:
            self._client = Http1Transport(pool_size=4)
        call = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        request = UpstreamRequest(
            "POST",
            self._url,
            _HEADERS,
            orjson.dumps(call),
            timeout_s=self._timeout_s,
            connect_timeout_s=self._timeout_s,
        )
        failure = ""
        try:
            response = await self._client.send(request)
            status, body = response.status, response.body
        except TransportError as exc:
            # Keep only the kind of failure (messages name the path, which may hold a key), and
            # raise outside this block so the original does not ride along as __context__.
            failure = type(exc).__name__
        if failure:
            raise self._error(method, f"unreachable ({failure})")
        if status != 200:
            raise self._error(method, f"HTTP {status}")
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise self._error(method, "the answer is not a JSON-RPC object")
        if (error := answer.get("error")) is not None:
            if isinstance(error, dict):
                error = f"{error.get('code')} {error.get('message')}"
            raise self._error(method, f"JSON-RPC error {str(error)[:200]}")
        if "result" not in answer:
            raise self._error(method, "the answer has no result")
        return answer["result"]
