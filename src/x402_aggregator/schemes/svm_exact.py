"""Solana ``exact`` payments: a transfer transaction the payer signed, the fee payer co-signs.

The message is what the payer signed and what the facilitator co-signs unchanged, so its hash
names the payment across retries and envelopes (v1 names and CAIP-2 ids alike); the fee payer
(account 0) is the only facilitator that can settle it. The chain proves it from the source
token account's history (a landed transaction with this message) and the recent blockhash's
lifetime: once that blockhash is invalid, a message not in the history never lands.
"""

from __future__ import annotations

import base64
import binascii

from .._types import JSONObject
from ..chains import svm_wire
from ..chains.base import ChainReader
from ..chains.svm import SvmReader
from ..errors import RequestError
from ..networks import caip2, family
from .base import FEE_PAYER_NOT_MANAGED, Evidence, PaymentFacts, inner

#: Reason of a settle refused because the transaction's blockhash expired before it landed.
BLOCK_HEIGHT_EXCEEDED = "settle_exact_svm_block_height_exceeded"
UNDECODABLE = "invalid_exact_svm_payload_transaction_could_not_be_decoded"
#: How many of the source account's newest transactions are searched for the payment.
HISTORY = 100


class SvmExactScheme:
    """Payments whose payload carries a Solana ``transaction`` on a ``solana:`` network."""

    name = "svm-exact"
    expired_reason = BLOCK_HEIGHT_EXCEEDED
    unowned_signer_reason = FEE_PAYER_NOT_MANAGED

    def read(
        self, network: str, requirements: JSONObject, payload: JSONObject
    ) -> PaymentFacts | None:
        encoded = inner(payload).get("transaction")
        if family(network) != "solana" or not isinstance(encoded, str):
            return None
        try:
            tx = svm_wire.decode(base64.b64decode(encoded, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise RequestError(UNDECODABLE, f"paymentPayload.payload.transaction: {exc}") from None
        transfers = tx.transfers()
        transfer = transfers[0] if len(transfers) == 1 else None
        payer = transfer.authority if transfer else None
        return PaymentFacts(
            identity=f"{caip2(network)}|svm|{tx.message_hash}",
            payer=payer,
            asset=transfer.mint if transfer else None,
            nonce=tx.signature_of(payer) if payer else None,
            bound_signer=tx.fee_payer,
            chain_keys=(tx.blockhash, transfer.source, tx.message_hash) if transfer else (),
        )

    def provable(self, facts: PaymentFacts, reader: ChainReader) -> bool:
        return isinstance(reader, SvmReader) and len(facts.chain_keys) == 3

    async def prove(self, facts: PaymentFacts, reader: ChainReader, now: float) -> Evidence:
        if not isinstance(reader, SvmReader) or len(facts.chain_keys) != 3:
            raise ValueError(f"{self.name}: this payment cannot be read from {reader!r}")
        blockhash, source, message_hash = facts.chain_keys
        # Validity first: if the blockhash is already dead, the history read after it is final.
        alive = await reader.blockhash_valid(blockhash)
        signatures = await reader.signatures_for_address(source, limit=HISTORY)
        for signature in signatures:
            landed = await reader.transaction(signature)
            if landed is None or _message_hash(landed.raw) != message_hash:
                continue
            # Landed with a failed instruction: that message is spent and never moves money.
            return Evidence("expired_unused") if landed.failed else Evidence("used", signature)
        if len(signatures) >= HISTORY:
            return Evidence("unknown")  # it may be older than the page we read
        return Evidence("unused" if alive else "expired_unused")


def _message_hash(raw: bytes) -> str | None:
    try:
        return svm_wire.decode(raw).message_hash
    except ValueError:
        return None
