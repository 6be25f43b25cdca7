"""The payment-kind seam: what routing, settlement and the ledger need to know about a payment.

Each payment kind family (EVM ``exact`` with EIP-3009, with Permit2, Solana ``exact``, ...)
is one module with one object satisfying :class:`PaymentScheme`. It reads the payment's facts
once, when the request is parsed: its identity (what makes it unique, never the amount: an
``upto`` payment settles less than it verified), the address bound to settle it, the payer and
when it can no longer move money. And, given a chain reader of its family, it tells what the
chain proves about the payment. Nothing else in the engine knows a kind by name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from .._types import JSONObject
from ..chains.base import ChainReader

#: What a facilitator answers for a payment naming a fee payer it does not hold (x402's reason).
FEE_PAYER_NOT_MANAGED = "fee_payer_not_managed_by_facilitator"

#: How far past its deadline (by our clock) an unused payment counts as expired: our clock may
#: run ahead of the chain's block timestamps.
EXPIRY_MARGIN_S = 300.0

#: ``used``: the payment moved (``transaction`` says where, when the chain could name it).
#: ``unused``: it has not moved, and may still. ``expired_unused``: it has not moved and never
#: can now. ``unknown``: this scheme cannot tell from the chain.
ChainState = Literal["used", "unused", "expired_unused", "unknown"]


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    """What a scheme reads from one payment, once, when its request is parsed."""

    #: Stable across envelopes and retries of the same signed payment (the ledger's key).
    identity: str
    payer: str | None = None
    asset: str | None = None
    nonce: str | None = None
    #: Unix time after which the payment can no longer move money (None: not known).
    valid_before: int | None = None
    #: The address that must settle it (Solana ``feePayer``, ``upto`` facilitator), if any.
    bound_signer: str | None = None
    #: What the scheme's ``prove`` asks the chain about, in its own order (Solana: the recent
    #: blockhash, the source token account, the message hash); empty when nothing.
    chain_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the chain says about a payment."""

    state: ChainState
    transaction: str | None = None


class PaymentScheme(Protocol):
    """One payment kind family, as the engine sees it."""

    #: A short name, for logs and the registry (``evm-eip3009``).
    name: str
    #: The ``errorReason`` of a settle refused because the payment expired unused.
    expired_reason: str
    #: The reason given when the payment's bound signer belongs to no upstream.
    unowned_signer_reason: str

    def read(
        self, network: str, requirements: JSONObject, payload: JSONObject
    ) -> PaymentFacts | None:
        """The payment's facts, or None when the payment is not of this kind.

        ``payload`` is the ``paymentPayload`` object, ``requirements`` the requirements.
        """
        ...

    def provable(self, facts: PaymentFacts, reader: ChainReader) -> bool:
        """Whether ``reader`` can tell if this payment moved (its family, the facts it needs)."""
        ...

    async def prove(self, facts: PaymentFacts, reader: ChainReader, now: float) -> Evidence:
        """Ask the chain whether the payment moved; ``now`` is the wall clock.

        Raises :class:`~x402_aggregator.errors.ChainError` or ``ValueError`` when the chain
        cannot say (unreachable, garbage, a field that is not of this chain).
        """
        ...


def canonical_hash(value: Any) -> str:
    """sha256 of the canonical (sorted-key) JSON of a value."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def inner(payload: JSONObject) -> JSONObject:
    """The scheme-specific ``payload`` object inside a ``paymentPayload`` (``{}`` if none)."""
    value = payload.get("payload")
    return value if isinstance(value, dict) else {}


def text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def timestamp(value: Any) -> int | None:
    """A Unix time that fits a BIGINT column, else None (uint256 fields can be larger)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**63) <= number < 2**63 else None


def extra_signer(requirements: JSONObject) -> str | None:
    """The signer a kind's ``extra`` binds the payment to (``feePayer``, ``facilitatorAddress``)."""
    extra = requirements.get("extra")
    if not isinstance(extra, dict):
        return None
    return text(extra.get("feePayer") or extra.get("facilitatorAddress"))


def unused(facts: PaymentFacts, now: float) -> Evidence:
    """Unused on chain: expired for good once past ``valid_before`` (with a clock margin)."""
    expired = facts.valid_before is not None and now > facts.valid_before + EXPIRY_MARGIN_S
    return Evidence("expired_unused" if expired else "unused")
