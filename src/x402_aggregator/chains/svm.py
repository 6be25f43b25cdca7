"""The Solana chain reader: the few JSON-RPC calls that tell whether an SVM payment landed.

A Solana transaction can land only while its recent blockhash is valid (150 blocks, about a
minute); after that, a transaction that is not in the chain's history never will be. Reads use
``confirmed`` commitment: ``processed`` can still be rolled back, so it is never a receipt.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from .base import Receipt
from .jsonrpc import JsonRpcReader

#: Public RPC endpoints shipped as defaults, by CAIP-2 network.
PUBLIC_RPCS: dict[str, str] = {
    "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp": "https://api.mainnet-beta.solana.com",
    "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1": "https://api.devnet.solana.com",
}
COMMITMENT = "confirmed"
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,88}")


@dataclass(frozen=True, slots=True)
class Landed:
    """A transaction in the chain's history: its bytes, and whether its instructions failed."""

    signature: str
    raw: bytes
    failed: bool
    slot: int


def _base58(value: str, what: str) -> str:
    if not isinstance(value, str) or not _BASE58.fullmatch(value):
        raise ValueError(f"{what} must be base58, got {str(value)[:90]!r}")
    return value


class SvmReader(JsonRpcReader):
    """Read-only JSON-RPC client for one Solana cluster."""

    family = "solana"

    async def blockhash_valid(self, blockhash: str) -> bool:
        """Whether a transaction with this recent blockhash can still land."""
        params = [_base58(blockhash, "blockhash"), {"commitment": COMMITMENT}]
        value = self._value("isBlockhashValid", await self._call("isBlockhashValid", params))
        if not isinstance(value, bool):
            raise self._error("isBlockhashValid", "not a bool")
        return value

    async def signatures_for_address(self, address: str, *, limit: int = 100) -> list[str]:
        """The newest ``limit`` transaction signatures that touched ``address``, newest first."""
        method = "getSignaturesForAddress"
        options = {"limit": limit, "commitment": COMMITMENT}
        result = await self._call(method, [_base58(address, "address"), options])
        if not isinstance(result, list):
            raise self._error(method, "the result is not a list")
        found = []
        for entry in result:
            if not isinstance(entry, dict) or not isinstance(entry.get("signature"), str):
                raise self._error(method, "a malformed entry")
            found.append(entry["signature"])
        return found

    async def transaction(self, signature: str) -> Landed | None:
        """The landed transaction (``confirmed``), or None if the chain does not have it."""
        method = "getTransaction"
        options = {
            "encoding": "base64",
            "commitment": COMMITMENT,
            "maxSupportedTransactionVersion": 0,
        }
        result = await self._call(method, [_base58(signature, "signature"), options])
        if result is None:
            return None
        try:
            encoded, encoding = result["transaction"]
            raw = base64.b64decode(encoded, validate=True)
            meta, slot = result["meta"], int(result["slot"])
        except (KeyError, TypeError, ValueError):
            raise self._error(method, "a malformed transaction") from None
        if encoding != "base64" or not isinstance(meta, dict):
            raise self._error(method, "a malformed transaction")
        return Landed(signature, raw, meta.get("err") is not None, slot)

    async def receipt(self, transaction: str) -> Receipt | None:
        """The signature's status once ``confirmed``; None while unknown or only processed."""
        method = "getSignatureStatuses"
        params = [[_base58(transaction, "transaction")], {"searchTransactionHistory": True}]
        value = self._value(method, await self._call(method, params))
        if not isinstance(value, list) or len(value) != 1:
            raise self._error(method, "not one status")
        status = value[0]
        if status is None:
            return None
        if not isinstance(status, dict) or not isinstance(status.get("slot"), int):
            raise self._error(method, "a malformed status")
        if status.get("confirmationStatus") not in ("confirmed", "finalized"):
            return None
        return Receipt(transaction, status.get("err") is None, status["slot"])

    def _value(self, method: str, result: Any) -> Any:
        if not isinstance(result, dict) or "value" not in result:
            raise self._error(method, "the result has no value")
        return result["value"]
