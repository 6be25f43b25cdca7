"""A Solana buyer: real SVM ``exact`` payments built by the official Python SDK's client scheme.

The SDK builds what every x402 client sends: a v0 transaction with compute-budget instructions,
an SPL ``TransferChecked`` and a memo, fee payer = the requirements' ``extra.feePayer`` (whose
signature slot it leaves empty for the facilitator), signed by the payer.
"""

from __future__ import annotations

import base64
import warnings
from typing import Any

from solders.keypair import Keypair
from solders.transaction import VersionedTransaction
from x402.mechanisms.svm import KeypairSigner
from x402.mechanisms.svm.exact.client import ExactSvmScheme
from x402.schemas import PaymentRequirements

from .payer import Payment, priced, request_body
from .solana import SVM_NETWORK, SVM_V1_NETWORK


class SvmPayer:
    """Pays in ``mint`` on the local cluster at ``rpc_url``."""

    def __init__(self, keypair: Keypair, mint: str, rpc_url: str) -> None:
        self.keypair = keypair
        self.mint = mint
        self._scheme = ExactSvmScheme(KeypairSigner(keypair), rpc_url=rpc_url)

    @property
    def address(self) -> str:
        return str(self.keypair.pubkey())

    def close(self) -> None:
        """Close the RPC connections the SDK's scheme opened (it offers no close of its own)."""
        clients: dict[str, Any] = getattr(self._scheme, "_clients", {})
        for client in clients.values():
            session = getattr(getattr(client, "_provider", None), "session", None)
            if session is not None:
                session.close()
        clients.clear()

    def requirements(
        self, pay_to: str, amount: int, fee_payer: str, *, version: int = 2, mint: str | None = None
    ) -> dict[str, Any]:
        """What a resource server asks for, naming the facilitator's fee payer."""
        common = {
            "scheme": "exact",
            "payTo": pay_to,
            "asset": mint or self.mint,
            "maxTimeoutSeconds": 60,
            "extra": {"feePayer": fee_payer},
        }
        return priced(
            common, amount, version=version, network=SVM_NETWORK, v1_network=SVM_V1_NETWORK
        )

    def pay(
        self,
        pay_to: str,
        amount: int,
        fee_payer: str,
        *,
        version: int = 2,
        signed_amount: int | None = None,
        signed_mint: str | None = None,
    ) -> Payment:
        """Sign a payment; ``signed_amount``/``signed_mint`` make the transfer disagree."""
        requirements = self.requirements(pay_to, amount, fee_payer, version=version)
        signed = self.requirements(
            pay_to, amount if signed_amount is None else signed_amount, fee_payer, mint=signed_mint
        )
        with warnings.catch_warnings():
            # solana-py's sync Client, which the SDK builds on, warns that it is deprecated.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            inner = self._scheme.create_payment_payload(PaymentRequirements.model_validate(signed))
        transaction = VersionedTransaction.from_bytes(base64.b64decode(inner["transaction"]))
        nonce = str(transaction.signatures[1])  # the payer's; slot 0 is the fee payer's
        body = request_body(requirements, inner, version=version)
        return Payment(body, self.address, nonce, amount)
