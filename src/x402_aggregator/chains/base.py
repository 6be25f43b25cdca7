"""What every chain reader offers, whatever its chain family.

A reader answers for one network. Settlement asks it about a transaction it was told of (a
receipt); what it can prove about a payment itself is the payment scheme's business (see
:mod:`x402_aggregator.schemes`), which knows the calls of its family's reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction: enough to tell whether a settle moved the money."""

    transaction: str  # the chain's transaction id (EVM: 0x-hash, lowercased)
    succeeded: bool
    block: int


class ChainReader(Protocol):
    """Read-only access to one network's chain."""

    #: The CAIP-2 namespace this reader speaks (``eip155``).
    family: str

    async def receipt(self, transaction: str) -> Receipt | None:
        """The transaction's receipt; None while it is not mined (or unknown to the node).

        Raises :class:`~x402_aggregator.errors.ChainError` (the chain did not answer) or
        ``ValueError`` (``transaction`` is not an id of this chain).
        """
        ...

    async def aclose(self) -> None:
        """Release connections; a later call opens new ones."""
        ...
