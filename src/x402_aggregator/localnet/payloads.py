"""Well-formed x402 v1 and v2 request bodies for tests and benchmarks against fake upstreams.

The signatures are placeholders: fake facilitators do not check them. Real, signed payments come
from the test bed's payer.
"""

from __future__ import annotations

import secrets
from typing import Any

PAYER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
USDC_BASE_SEPOLIA = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


def _authorization(
    amount: str, nonce: str | None, valid_before: int | None = None
) -> dict[str, Any]:
    return {
        "signature": "0x" + "ab" * 65,
        "authorization": {
            "from": PAYER,
            "to": PAY_TO,
            "value": amount,
            "validAfter": "1740672089",
            "validBefore": str(valid_before or 4102444800),
            "nonce": nonce or "0x" + secrets.token_hex(32),
        },
    }


def v2_body(
    *,
    network: str = "eip155:84532",
    scheme: str = "exact",
    amount: str = "10000",
    nonce: str | None = None,
    extra: dict[str, Any] | None = None,
    extensions: dict[str, Any] | None = None,
    valid_before: int | None = None,
) -> dict[str, Any]:
    """A v2 ``/verify`` / ``/settle`` body (EVM ``exact``, EIP-3009 by default)."""
    requirements = {
        "scheme": scheme,
        "network": network,
        "amount": amount,
        "asset": USDC_BASE_SEPOLIA,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2", **(extra or {})},
    }
    payload: dict[str, Any] = {
        "x402Version": 2,
        "resource": {"url": "https://api.example.com/weather"},
        "accepted": requirements,
        "payload": _authorization(amount, nonce, valid_before),
    }
    if extensions is not None:
        payload["extensions"] = extensions
    return {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": requirements}


def v1_body(
    *, network: str = "base-sepolia", amount: str = "10000", nonce: str | None = None
) -> dict[str, Any]:
    """A v1 body, as legacy resource servers send it."""
    requirements = {
        "scheme": "exact",
        "network": network,
        "maxAmountRequired": amount,
        "resource": "https://api.example.com/weather",
        "description": "weather",
        "mimeType": "application/json",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "asset": USDC_BASE_SEPOLIA,
        "extra": {"name": "USDC", "version": "2"},
    }
    payload = {
        "x402Version": 1,
        "scheme": "exact",
        "network": network,
        "payload": _authorization(amount, nonce),
    }
    return {"x402Version": 1, "paymentPayload": payload, "paymentRequirements": requirements}
