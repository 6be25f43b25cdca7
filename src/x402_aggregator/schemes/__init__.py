"""Payment schemes behind one seam: the first that recognises a payment reads its facts.

A new payment kind is one module here (an object satisfying :class:`PaymentScheme`) and one
entry in :data:`SCHEMES`, ahead of the opaque fallback.
"""

from __future__ import annotations

from .._types import JSONObject
from .base import ChainState, Evidence, PaymentFacts, PaymentScheme, canonical_hash
from .evm_eip3009 import Eip3009Scheme
from .evm_permit2 import Permit2Scheme
from .opaque import OpaqueScheme
from .svm_exact import SvmExactScheme

__all__ = [
    "SCHEMES",
    "ChainState",
    "Evidence",
    "PaymentFacts",
    "PaymentScheme",
    "canonical_hash",
    "read_payment",
]

#: Tried in order; the opaque fallback recognises everything, so it comes last.
SCHEMES: tuple[PaymentScheme, ...] = (
    Eip3009Scheme(),
    Permit2Scheme(),
    SvmExactScheme(),
    OpaqueScheme(),
)


def read_payment(
    network: str, requirements: JSONObject, payload: JSONObject
) -> tuple[PaymentScheme, PaymentFacts]:
    """The scheme of a payment and the facts it reads from it."""
    for scheme in SCHEMES:
        facts = scheme.read(network, requirements, payload)
        if facts is not None:
            return scheme, facts
    raise AssertionError("the opaque scheme recognises every payment")  # pragma: no cover
