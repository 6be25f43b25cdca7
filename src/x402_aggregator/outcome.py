"""How one call to one upstream ended: a value the engine decides on, never an exception.

- ``ok``: the payment is valid / settled;
- ``rejected``: a definitive answer about the payment (``isValid:false``, ``success:false``);
- ``retryable``: nothing usable came back and another upstream may be asked;
- ``ambiguous``: a settle may have moved money and nobody knows yet; never sent elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._types import JSONObject, Operation

OutcomeKind = Literal["ok", "rejected", "retryable", "ambiguous"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call to one upstream ended."""

    kind: OutcomeKind
    upstream: str
    elapsed_s: float
    status: int | None = None
    #: The answer in spec shape, when the upstream gave one we may relay: always for ``ok`` and
    #: ``rejected``; for ``ambiguous`` only a ``settlement_pending`` (which carries the tx hash).
    answer: JSONObject | None = field(default=None, repr=False)
    #: The upstream's own bytes, when ``answer`` needed no change and can be forwarded as is.
    raw: bytes | None = field(default=None, repr=False)
    #: What went wrong, safe to show (no secrets, no payload).
    error: str | None = None
    extension_responses: str | None = field(default=None, repr=False)
    operation: Operation = "verify"
    #: The request provably never reached the upstream (refused, connect timeout).
    never_arrived: bool = False
