"""The EVM chain reader: a small, read-only JSON-RPC client for chain evidence.

When a settle's outcome is unknown (timeout, dropped connection, ``settlement_pending``), the
chain is the authority: an EIP-3009 authorization is either used or not, and its
``AuthorizationUsed`` log names the transaction that used it; a sent transaction has a receipt
or not. Plain JSON-RPC on the lean HTTP/1.1 client keeps this light enough to embed; errors name
only the RPC's host, as RPC URLs often carry API keys.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from .base import Receipt
from .jsonrpc import JsonRpcReader

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
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_STATE = AUTHORIZATION_STATE_SELECTOR


def _hex(value: str, pattern: re.Pattern[str], what: str) -> str:
    """Validated, lowercased; callers pass untrusted payload fields, so refuse early."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} must be 0x-prefixed hex, got {value!r}")
    return value.lower()


def word(address: str) -> str:
    """An address as a 32-byte ABI word (or log topic), validated: callers pass payload fields."""
    return "0x" + _hex(address, _ADDRESS, "address")[2:].rjust(64, "0")


class EvmReader(JsonRpcReader):
    """Read-only JSON-RPC client for one EVM chain; owns a connection pool."""

    family = "eip155"

    async def authorization_used(self, token: str, authorizer: str, nonce: str) -> bool:
        """Whether ``token`` has consumed this authorization (on ``latest``): the money moved."""
        owner, nonce = word(authorizer), _hex(nonce, _BYTES32, "nonce")
        call = {"to": _hex(token, _ADDRESS, "token"), "data": _STATE + owner[2:] + nonce[2:]}
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
        """The hash of the transaction that used this authorization, or None if not seen."""
        topics = [AUTHORIZATION_USED_TOPIC, word(authorizer), _hex(nonce, _BYTES32, "nonce")]
        return await self.find_log(token, topics, lookback_blocks=lookback_blocks, window=window)

    async def call(self, to: str, data: str) -> str:
        """``eth_call`` on ``latest``: the returned bytes as 0x-hex."""
        call = {"to": _hex(to, _ADDRESS, "contract"), "data": _hex(data, _DATA, "call data")}
        result = await self._call("eth_call", [call, "latest"])
        if not isinstance(result, str) or not _DATA.fullmatch(result):
            raise self._error("eth_call", f"not hex data: {str(result)[:80]!r}")
        return result.lower()

    async def transaction_input(self, transaction: str) -> str | None:
        """A transaction's call data (0x-hex), or None if the node does not know it."""
        method = "eth_getTransactionByHash"
        result = await self._call(method, [_hex(transaction, _BYTES32, "transaction")])
        if result is None:
            return None
        data = result.get("input") if isinstance(result, dict) else None
        if not isinstance(data, str) or not _DATA.fullmatch(data):
            raise self._error(method, "a malformed transaction")
        return data.lower()

    async def find_log(
        self,
        address: str,
        topics: list[str],
        accept: Callable[[str], Awaitable[bool]] | None = None,
        *,
        lookback_blocks: int = 50_000,
        window: int = 2_000,
        limit: int = 64,
    ) -> str | None:
        """The transaction of the newest log of ``address`` with these leading ``topics``.

        ``accept`` (given a transaction hash) filters candidates, of which at most ``limit``
        are examined. Walks back from ``latest`` in ``window``-block ``eth_getLogs`` ranges
        (public RPCs cap the range) over at most ``lookback_blocks`` blocks, newest first, as
        settles are recent. None when no log matched.
        """
        if lookback_blocks < 1 or window < 1:
            raise ValueError("lookback_blocks and window must be positive")
        address = _hex(address, _ADDRESS, "contract")
        topics = [_hex(topic, _BYTES32, "topic") for topic in topics]
        high = self._quantity("eth_blockNumber", await self._call("eth_blockNumber", []))
        oldest = max(0, high - lookback_blocks + 1)
        examined = 0
        while high >= oldest and examined < limit:
            low = max(oldest, high - window + 1)
            span = {"fromBlock": hex(low), "toBlock": hex(high)}
            logs = await self._call("eth_getLogs", [{"address": address, "topics": topics, **span}])
            if not isinstance(logs, list):
                raise self._error("eth_getLogs", "the result is not a list")
            for log in reversed(logs):
                if not isinstance(log, dict) or not isinstance(log.get("topics"), list):
                    raise self._error("eth_getLogs", "a malformed log")
                # Some nodes ignore filters they do not support: check rather than trust.
                seen = [str(topic).lower() for topic in log["topics"][: len(topics)]]
                matches = seen == topics and str(log.get("address")).lower() == address
                if not matches or log.get("removed"):
                    continue
                transaction = self._hash("eth_getLogs", log.get("transactionHash"))
                examined += 1
                if accept is None or await accept(transaction):
                    return transaction
                if examined >= limit:
                    break
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

    def _quantity(self, method: str, value: Any) -> int:
        if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
            raise self._error(method, f"a malformed number {str(value)[:80]!r}")
        return int(value, 16)

    def _hash(self, method: str, value: Any) -> str:
        if not isinstance(value, str) or not _BYTES32.fullmatch(value):
            raise self._error(method, f"a malformed transaction hash {str(value)[:80]!r}")
        return value.lower()
