"""EVM ``exact`` payments through Permit2 (any ERC-20, not only tokens with EIP-3009).

Permit2 nonces belong to the owner across every token, so (network, owner, nonce) names the
payment. Reading Permit2's nonce bitmap from the chain is not done yet: an unclear outcome
stays unresolved until the upstream that may have it answers.
"""

from __future__ import annotations

from .._types import JSONObject
from ..chains.base import ChainReader
from ..networks import caip2
from .base import Evidence, PaymentFacts, extra_signer, inner, text, timestamp


class Permit2Scheme:
    """Payments whose payload carries a ``permit2Authorization``."""

    name = "evm-permit2"
    expired_reason = "permit2_deadline_expired"

    def read(
        self, network: str, requirements: JSONObject, payload: JSONObject
    ) -> PaymentFacts | None:
        permit = inner(payload).get("permit2Authorization")
        if not isinstance(permit, dict) or not isinstance(permit.get("from"), str):
            return None
        identity = f"{caip2(network)}|permit2|{permit['from']}|{permit.get('nonce')}".lower()
        return PaymentFacts(
            identity=identity,
            payer=permit["from"],
            asset=text(requirements.get("asset")),
            nonce=text(permit.get("nonce")),
            valid_before=timestamp(permit.get("deadline")),
            bound_signer=extra_signer(requirements),
        )

    def provable(self, facts: PaymentFacts, reader: ChainReader) -> bool:
        return False

    async def prove(self, facts: PaymentFacts, reader: ChainReader, now: float) -> Evidence:
        return Evidence("unknown")
