"""What this process knows about each payment it has settled: one settle per payment.

In memory for now (the durable ledger replaces it): a payment has at most one settle in flight
(duplicates wait for it), is reported settled once (later ones get ``duplicate_settlement``
with the original transaction), and a payment whose settle may have landed (``pending`` or
outcome unknown) goes back only to the upstream that has it, never to another.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

State = Literal["in_flight", "settled", "pending", "unknown"]
#: Entries kept; the oldest go first.
MAX_ENTRIES = 100_000
_LASTING: dict[str, State] = {"settled": "settled", "pending": "pending", "unknown": "unknown"}
#: EIP-3009 authorizations in x402 are short-lived (minutes); a day covers any retry.
TTL_S = 24 * 3600.0


@dataclass(slots=True)
class Settlement:
    state: State
    upstream: str | None = None
    transaction: str | None = None
    done: asyncio.Future[None] = field(default_factory=asyncio.Future, repr=False)
    at: float = field(default_factory=time.monotonic)


class Settlements:
    """Settles by payment identity (network, asset, payer, nonce)."""

    def __init__(self, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, Settlement] = OrderedDict()
        self._ttl_s = ttl_s
        self._max = max_entries

    def get(self, identity: str) -> Settlement | None:
        entry = self._entries.get(identity)
        if entry is not None and time.monotonic() - entry.at > self._ttl_s:
            del self._entries[identity]
            return None
        return entry

    def begin(self, identity: str, previous: Settlement | None) -> Settlement:
        """Mark a settle in flight (keeping the upstream an ambiguous earlier one went to)."""
        entry = Settlement("in_flight", upstream=previous.upstream if previous else None)
        self._entries[identity] = entry
        self._entries.move_to_end(identity)
        # Oldest first: drop the expired ones (and any beyond the cap) from the front.
        while self._entries and (
            len(self._entries) > self._max
            or time.monotonic() - next(iter(self._entries.values())).at > self._ttl_s
        ):
            self._entries.popitem(last=False)
        return entry

    def finish(
        self, identity: str, entry: Settlement, result: str, upstream: str | None, tx: str | None
    ) -> None:
        """Record how the settle ended and wake the duplicates waiting for it."""
        state = _LASTING.get(result)
        if state is not None:
            entry.state = state
            entry.upstream = upstream or entry.upstream
            entry.transaction = tx or entry.transaction
        elif self._entries.get(identity) is entry:
            # A definitive failure, or no upstream reached: nothing happened, a retry is fresh.
            del self._entries[identity]
        if not entry.done.done():
            entry.done.set_result(None)

    def ambiguous(self) -> int:
        return sum(e.state in ("pending", "unknown") for e in self._entries.values())
