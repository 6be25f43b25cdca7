"""EVM ``exact`` payments by EIP-3009 ``transferWithAuthorization`` (USDC and its kin).

The authorization's nonce can be used once per payer and token, so (network, token, payer,
nonce) names the payment whatever envelope it travels in; the token's ``authorizationState``
says whether it was used, and its ``AuthorizationUsed`` log names the transaction.
"""

from __future__ import annotations

from .._types import JSONObject
from ..chains.base import ChainReader
from ..chains.evm import EvmReader
from ..networks import caip2
from .base import (
    FEE_PAYER_NOT_MANAGED,
    Evidence,
    PaymentFacts,
    extra_signer,
    inner,
    text,
    timestamp,
    unused,
)


class Eip3009Scheme:
    """Payments whose payload carries an EIP-3009 ``authorization``."""

    name = "evm-eip3009"
    expired_reason = "invalid_exact_evm_payload_authorization_valid_before"
    unowned_signer_reason = FEE_PAYER_NOT_MANAGED

    def read(
        self, network: str, requirements: JSONObject, payload: JSONObject
    ) -> PaymentFacts | None:
        auth = inner(payload).get("authorization")
        if not isinstance(auth, dict) or not isinstance(auth.get("from"), str):
            return None
        asset = requirements.get("asset")
        # v1 names and CAIP-2 ids of one chain are one chain: the same authorization sent as
        # "base-sepolia" and as "eip155:84532" is the same payment.
        identity = f"{caip2(network)}|{asset}|{auth['from']}|{auth.get('nonce')}".lower()
        return PaymentFacts(
            identity=identity,
            payer=auth["from"],
            asset=text(asset),
            nonce=text(auth.get("nonce")),
            valid_before=timestamp(auth.get("validBefore")),
            bound_signer=extra_signer(requirements),
        )

    def provable(self, facts: PaymentFacts, reader: ChainReader) -> bool:
        # The token, the authorizer and the nonce: what ``authorizationState`` is asked about.
        return isinstance(reader, EvmReader) and None not in (facts.asset, facts.payer, facts.nonce)

    async def prove(self, facts: PaymentFacts, reader: ChainReader, now: float) -> Evidence:
        token, authorizer, nonce = facts.asset, facts.payer, facts.nonce
        if (
            not isinstance(reader, EvmReader)
            or token is None
            or authorizer is None
            or nonce is None
        ):
            raise ValueError(f"{self.name}: this payment cannot be read from {reader!r}")
        if not await reader.authorization_used(token, authorizer, nonce):
            return unused(facts, now)
        return Evidence("used", await reader.find_authorization(token, authorizer, nonce))
