"""The attempts of one claimed payment: numbered, and each written down before it is made."""

from __future__ import annotations

from typing import Literal

from ..ledger import AttemptEnd, Ledger, Record


class Journal:
    """Numbers the attempts made for ``record`` and writes them, fenced by its claim."""

    def __init__(self, ledger: Ledger, record: Record) -> None:
        self.ledger = ledger
        self.record = record
        #: The number of the last attempt begun (the record's earlier ones included).
        self.n = record.attempt_count

    async def begin(self, kind: Literal["settle", "chain"], upstream: str | None) -> int:
        """Write that the next attempt is about to be made, durably; return its number."""
        self.n += 1
        await self.ledger.begin_attempt(self.record, self.n, kind, upstream)
        return self.n

    async def end(self, end: AttemptEnd) -> None:
        await self.ledger.end_attempt(self.record, end)
