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
from typing import Generic, Literal, TypeVar

State = Literal["in_flight", "settled", "pending", "unknown"]
R = TypeVar("R")
#: Entries kept; the oldest go first.
MAX_ENTRIES = 100_000
_LASTING: dict[str, State] = {"settled": "settled", "pending": "pending", "unknown": "unknown"}
#: EIP-3009 authorizations in x402 are short-lived (minutes); a day covers any retry.
TTL_S = 24 * 3600.0


@dataclass(slots=True)
class Settlement(Generic[R]):
    state: State
    upstream: str | None = None
    transaction: str | None = None
    #: The answer the settle ended with; copies that waited for it share it.
    reply: R | None = None
    done: asyncio.Future[None] = field(default_factory=asyncio.Future, repr=False)
    at: float = field(default_factory=time.monotonic)

    def settled(self) -> bool:
        return self.state == "settled"


class Settlements(Generic[R]):
    """Settles by payment identity (network, asset, payer, nonce)."""

    def __init__(self, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, Settlement[R]] = OrderedDict()
        self._ttl_s = ttl_s
        self._max = max_entries

    def get(self, identity: str) -> Settlement[R] | None:
        entry = self._entries.get(identity)
        if entry is not None and time.monotonic() - entry.at > self._ttl_s:
            del self._entries[identity]
            return None
        return entry

    def begin(self, identity: str, previous: Settlement[R] | None) -> Settlement[R]:
        """Mark a settle in flight (keeping the upstream an ambiguous earlier one went to)."""
        entry: Settlement[R] = Settlement("in_flight", previous.upstream if previous else None)
        self._entries[identity] = entry
        self._entries.move_to_end(identity)
        self._trim()
        return entry

    def finish(
        self,
        identity: str,
        entry: Settlement[R],
        result: str,
        upstream: str | None,
        transaction: str | None,
        reply: R | None,
    ) -> None:
        """Record how the settle ended and wake the copies waiting for it."""
        entry.reply = reply
        state = _LASTING.get(result)
        if state is not None:
            entry.state = state
            entry.upstream = upstream or entry.upstream
            entry.transaction = transaction or entry.transaction
        elif self._entries.get(identity) is entry:
            # A definitive failure, or no upstream reached: nothing happened, a retry is fresh.
            del self._entries[identity]
        if not entry.done.done():
            entry.done.set_result(None)

    def ambiguous(self) -> int:
        """Settles whose outcome is not known yet (pending, or may have landed)."""
        return sum(e.state in ("pending", "unknown") for e in self._entries.values())

    def _trim(self) -> None:
        """Forget expired entries, then settled ones beyond the cap, oldest first.

        In flight, pending and unknown entries are never dropped for space: forgetting one
        would let a retry of a payment that may have landed go to another upstream.
        """
        now = time.monotonic()
        while self._entries and now - next(iter(self._entries.values())).at > self._ttl_s:
            self._entries.popitem(last=False)
        excess = len(self._entries) - self._max
        if excess > 0:
            settled = [k for k, e in self._entries.items() if e.state == "settled"][:excess]
            for key in settled:
                del self._entries[key]
