"""A buyer: signs real EIP-3009 ``TransferWithAuthorization`` payments and builds x402 bodies."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount

from .chain import CHAIN_ID, NETWORK, USDC_NAME, USDC_VERSION, V1_NETWORK

_TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def priced(
    common: dict[str, Any], amount: int, *, version: int, network: str, v1_network: str
) -> dict[str, Any]:
    """Requirements for ``amount`` in the shape of x402 ``version`` (v1 names its network)."""
    if version == 1:
        return {
            **common,
            "network": v1_network,
            "maxAmountRequired": str(amount),
            "resource": "http://127.0.0.1/weather",
            "description": "weather report",
            "mimeType": "application/json",
        }
    return {**common, "network": network, "amount": str(amount)}


def request_body(
    requirements: dict[str, Any], inner: dict[str, Any], *, version: int
) -> dict[str, Any]:
    """The ``/verify`` and ``/settle`` body for a scheme's signed ``inner`` payload."""
    if version == 1:
        payload: dict[str, Any] = {
            "x402Version": 1,
            "scheme": requirements["scheme"],
            "network": requirements["network"],
            "payload": inner,
        }
    else:
        payload = {
            "x402Version": 2,
            "resource": {"url": "http://127.0.0.1/weather"},
            "accepted": requirements,
            "payload": inner,
        }
    return {"x402Version": version, "paymentPayload": payload, "paymentRequirements": requirements}


@dataclass(frozen=True, slots=True)
class Payment:
    """One signed payment: the request body for ``/verify`` and ``/settle``, and its identity."""

    body: dict[str, Any]
    payer: str
    nonce: str
    amount: int


class Payer:
    """Signs payments for ``asset`` (the test bed's USDC) on chain 84532."""

    def __init__(self, account: LocalAccount, asset: str) -> None:
        self.account = account
        self.asset = asset

    @property
    def address(self) -> str:
        return str(self.account.address)

    def requirements(self, pay_to: str, amount: int, *, version: int = 2) -> dict[str, Any]:
        """What a resource server would ask for."""
        common = {
            "scheme": "exact",
            "payTo": pay_to,
            "asset": self.asset,
            "maxTimeoutSeconds": 60,
            "extra": {"name": USDC_NAME, "version": USDC_VERSION},
        }
        return priced(common, amount, version=version, network=NETWORK, v1_network=V1_NETWORK)

    def pay(
        self,
        pay_to: str,
        amount: int,
        *,
        version: int = 2,
        value: int | None = None,
        valid_for_s: int = 300,
        signer: LocalAccount | None = None,
    ) -> Payment:
        """Sign a payment of ``amount``; ``value``/``signer``/``valid_for_s`` inject faults."""
        requirements = self.requirements(pay_to, amount, version=version)
        now = int(time.time())
        authorization = {
            "from": self.address,
            "to": pay_to,
            "value": str(amount if value is None else value),
            "validAfter": str(now - 60),
            "validBefore": str(now + valid_for_s),
            "nonce": "0x" + secrets.token_hex(32),
        }
        signature = (signer or self.account).sign_typed_data(
            domain_data={
                "name": USDC_NAME,
                "version": USDC_VERSION,
                "chainId": CHAIN_ID,
                "verifyingContract": self.asset,
            },
            message_types=_TYPES,
            message_data={
                **authorization,
                "value": int(authorization["value"]),
                "validAfter": int(authorization["validAfter"]),
                "validBefore": int(authorization["validBefore"]),
                "nonce": bytes.fromhex(authorization["nonce"][2:]),
            },
        )
        inner = {
            "signature": "0x" + signature.signature.hex().removeprefix("0x"),
            "authorization": authorization,
        }
        body = request_body(requirements, inner, version=version)
        return Payment(body, self.address, authorization["nonce"], amount)
