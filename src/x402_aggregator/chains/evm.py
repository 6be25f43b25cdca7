"""The EVM chain reader: a small, read-only JSON-RPC client for chain evidence.

When a settle's outcome is unknown (timeout, dropped connection, ``settlement_pending``), the
chain is the authority: an EIP-3009 authorization is either used or not, and its
``AuthorizationUsed`` log names the transaction that used it; a sent transaction has a receipt
or not. Plain JSON-RPC over aiohttp keeps this light enough to embed; errors name only the RPC's
host, as RPC URLs often carry API keys.
"""

from __future__ import annotations

import itertools
import re
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ..errors import ChainError
from .base import Receipt

#: ``authorizationState(address,bytes32)`` of FiatToken / EIP-3009 tokens.
AUTHORIZATION_STATE_SELECTOR = "0xe94a0102"
#: ``keccak("AuthorizationUsed(address,bytes32)")``: both arguments are indexed.
AUTHORIZATION_USED_TOPIC = "0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5"

#: Public RPC endpoints shipped as defaults, by CAIP-2 network; overridable in config (`networks:`).
PUBLIC_RPCS: dict[str, str] = {
    "eip155:8453": "https://mainnet.base.org",
    "eip155:84532": "https://sepolia.base.org",
    "eip155:43114": "https://api.avax.network/ext/bc/C/rpc",
    "eip155:43113": "https://api.avax-test.network/ext/bc/C/rpc",
    "eip155:137": "https://polygon-rpc.com",
    "eip155:80002": "https://rpc-amoy.polygon.technology",
}
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_BYTES32 = re.compile(r"0x[0-9a-fA-F]{64}")
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}")
_STATE = AUTHORIZATION_STATE_SELECTOR
_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def _hex(value: str, pattern: re.Pattern[str], what: str) -> str:
    """Validated, lowercased; callers pass untrusted payload fields, so refuse early."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} must be 0x-prefixed hex, got {value!r}")
    return value.lower()


def _topic(address: str) -> str:
    """An address as a 32-byte ABI word / log topic."""
    return "0x" + _hex(address, _ADDRESS, "authorizer")[2:].rjust(64, "0")


def _origin(url: str) -> str:
    """``scheme://host:port`` only: paths, queries and userinfo may hold API keys."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("rpc_url must be an http(s) URL with a host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


class EvmReader:
    """Read-only JSON-RPC client for one EVM chain; owns an aiohttp session made on first use."""

    family = "eip155"

    def __init__(self, rpc_url: str, *, timeout_s: float = 5.0) -> None:
        self._url = rpc_url
        self._origin = _origin(rpc_url)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"EvmReader({self._origin!r})"

    async def authorization_used(self, token: str, authorizer: str, nonce: str) -> bool:
        """Whether ``token`` has consumed this authorization (on ``latest``): the money moved."""
        word, nonce = _topic(authorizer), _hex(nonce, _BYTES32, "nonce")
        call = {"to": _hex(token, _ADDRESS, "token"), "data": _STATE + word[2:] + nonce[2:]}
        result = await self._call("eth_call", [call, "latest"])
        if not isinstance(result, str) or not _BYTES32.fullmatch(result) or int(result, 16) > 1:
            raise self._error("eth_call", f"not a bool: {str(result)[:80]!r} (not a token?)")
        return result.endswith("1")

    async def find_authorization(
        self,
        token: str,
        authorizer: str,
        nonce: str,
        *,
        lookback_blocks: int = 50_000,
        window: int = 2_000,
    ) -> str | None:
        """The hash of the transaction that used this authorization, or None if not seen.

        Walks back from ``latest`` in ``window``-block ``eth_getLogs`` ranges (public RPCs cap
        the range) over at most ``lookback_blocks`` blocks; newest first, as settles are recent.
        """
        if lookback_blocks < 1 or window < 1:
            raise ValueError("lookback_blocks and window must be positive")
        address = _hex(token, _ADDRESS, "token")
        topics = [AUTHORIZATION_USED_TOPIC, _topic(authorizer), _hex(nonce, _BYTES32, "nonce")]
        high = self._quantity("eth_blockNumber", await self._call("eth_blockNumber", []))
        oldest = max(0, high - lookback_blocks + 1)
        while high >= oldest:
            low = max(oldest, high - window + 1)
            span = {"fromBlock": hex(low), "toBlock": hex(high)}
            logs = await self._call("eth_getLogs", [{"address": address, "topics": topics, **span}])
            if not isinstance(logs, list):
                raise self._error("eth_getLogs", "the result is not a list")
            for log in reversed(logs):
                if not isinstance(log, dict) or not isinstance(log.get("topics"), list):
                    raise self._error("eth_getLogs", "a malformed log")
                # Some nodes ignore filters they do not support: check rather than trust.
                seen = [str(topic).lower() for topic in log["topics"][:3]]
                matches = seen == topics and str(log.get("address")).lower() == address
                if matches and not log.get("removed"):
                    return self._hash("eth_getLogs", log.get("transactionHash"))
            high = low - 1
        return None

    async def receipt(self, transaction: str) -> Receipt | None:
        """The transaction's receipt; None while it is not mined (or unknown to the node)."""
        method = "eth_getTransactionReceipt"
        result = await self._call(method, [_hex(transaction, _BYTES32, "transaction")])
        if result is None:
            return None
        if not isinstance(result, dict) or result.get("status") not in ("0x0", "0x1"):
            raise self._error(method, "a malformed receipt")
        if result.get("blockNumber") is None:  # some nodes return pending receipts
            return None
        return Receipt(
            transaction=self._hash(method, result.get("transactionHash")),
            succeeded=result["status"] == "0x1",
            block=self._quantity(method, result["blockNumber"]),
        )

    async def aclose(self) -> None:
        """Close the session; a later call opens a new one."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _error(self, method: str, problem: str) -> ChainError:
        return ChainError(f"{method} at {self._origin}: {problem}")

    def _quantity(self, method: str, value: Any) -> int:
        if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
            raise self._error(method, f"a malformed number {str(value)[:80]!r}")
        return int(value, 16)

    def _hash(self, method: str, value: Any) -> str:
        if not isinstance(value, str) or not _BYTES32.fullmatch(value):
            raise self._error(method, f"a malformed transaction hash {str(value)[:80]!r}")
        return value.lower()

    async def _call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; every failure becomes a ChainError naming only the host."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        failure = ""
        try:
            async with self._session.post(
                self._url, data=orjson.dumps(request), headers=_HEADERS, allow_redirects=False
            ) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # aiohttp's messages can quote the full URL: keep only the kind of failure, and
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
