"""A Permit2 buyer: real ``exact`` (Permit2) and ``upto`` payments built by the official Python
SDK's client schemes, in a token without EIP-3009 that the payer has approved to Permit2.

An ``upto`` payment authorises a maximum; the resource server settles what was used, by sending
``/settle`` the same payload with requirements whose ``amount`` is that use (:func:`settle_for`).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.exact.client import ExactEvmScheme
from x402.mechanisms.evm.upto.client import UptoEvmScheme
from x402.schemas import PaymentRequirements

from .chain import NETWORK, V1_NETWORK
from .payer import Payment, priced, request_body

Method = Literal["permit2", "upto"]


class Permit2Payer:
    """Signs Permit2 payments in ``token`` on chain 84532 (v2 only: the SDKs have no v1 form)."""

    def __init__(self, account: LocalAccount, token: str) -> None:
        self.account = account
        self.token = token
        self._exact = ExactEvmScheme(account)  # type: ignore[arg-type]
        self._upto = UptoEvmScheme(account)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        return str(self.account.address)

    def requirements(
        self, pay_to: str, amount: int, method: Method = "permit2", facilitator: str | None = None
    ) -> dict[str, Any]:
        """What a resource server asks for; ``upto`` names the facilitator that must settle."""
        if method == "upto":
            if facilitator is None:
                raise ValueError("an upto payment names its facilitator (extra.facilitatorAddress)")
            extra: dict[str, Any] = {"facilitatorAddress": facilitator}
        else:
            extra = {"assetTransferMethod": "permit2"}
        common = {
            "scheme": "exact" if method == "permit2" else "upto",
            "payTo": pay_to,
            "asset": self.token,
            "maxTimeoutSeconds": 60,
            "extra": extra,
        }
        return priced(common, amount, version=2, network=NETWORK, v1_network=V1_NETWORK)

    def pay(
        self,
        pay_to: str,
        amount: int,
        method: Method = "permit2",
        *,
        facilitator: str | None = None,
        signer: LocalAccount | None = None,
    ) -> Payment:
        """Sign a payment of ``amount`` (the maximum, for ``upto``); ``signer`` injects a fault."""
        requirements = self.requirements(pay_to, amount, method, facilitator)
        model = PaymentRequirements.model_validate(requirements)
        scheme: ExactEvmScheme | UptoEvmScheme = self._exact if method == "permit2" else self._upto
        if signer is not None:
            scheme = (ExactEvmScheme if method == "permit2" else UptoEvmScheme)(signer)  # type: ignore[arg-type]
        inner = scheme.create_payment_payload(model)
        body = request_body(requirements, inner, version=2)
        nonce = str(inner["permit2Authorization"]["nonce"])
        return Payment(body, self.address, nonce, amount)


def settle_for(payment: Payment, amount: int) -> dict[str, Any]:
    """The ``/settle`` body of an ``upto`` payment that used ``amount`` of its maximum."""
    body = copy.deepcopy(payment.body)
    body["paymentRequirements"]["amount"] = str(amount)
    return body
