"""Any other payment: known by the hash of what the payer signed, never proven from a chain.

The fallback for kinds without a module of their own (future schemes): the
canonical ``paymentPayload`` is the same bytes on every retry of the same signed payment.
"""

from __future__ import annotations

from .._types import JSONObject
from ..chains.base import ChainReader
from .base import FEE_PAYER_NOT_MANAGED, Evidence, PaymentFacts, canonical_hash, extra_signer


class OpaqueScheme:
    """A payment the engine does not understand beyond its envelope."""

    name = "opaque"
    expired_reason = "invalid_payload"
    unowned_signer_reason = FEE_PAYER_NOT_MANAGED

    def read(
        self, network: str, requirements: JSONObject, payload: JSONObject
    ) -> PaymentFacts | None:
        return PaymentFacts(
            identity="sha256:" + canonical_hash(payload), bound_signer=extra_signer(requirements)
        )

    def provable(self, facts: PaymentFacts, reader: ChainReader) -> bool:
        return False

    async def prove(self, facts: PaymentFacts, reader: ChainReader, now: float) -> Evidence:
        return Evidence("unknown")
