"""Idempotency keys: the first answer given under a caller's key, replayed for a repeat.

Kept apart from the settlement records: a key names a caller's request, not a payment, and its
rows are not fenced by a claim (the first answer written under a key stays).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .base import Database


@dataclass(frozen=True, slots=True)
class IdempotentResponse:
    """The answer remembered under an idempotency key, and the request it answered."""

    settlement_id: str
    request_hash: str
    status: int
    body: bytes


class IdempotencyKeys:
    """Rows of ``idempotency_keys``, kept as long as the payment they answered."""

    def __init__(self, db: Database, expiry: Callable[[int | None, float], float]) -> None:
        self.db = db
        #: When a row written at ``now`` for a payment valid before ``valid_before`` expires.
        self._expiry = expiry

    async def response(self, key: str) -> IdempotentResponse | None:
        """The answer remembered under ``key``, if any."""
        rows = await self.db.fetch(
            "SELECT settlement_id, request_hash, status, response FROM idempotency_keys"
            " WHERE idem_key = ?",
            key,
        )
        if not rows:
            return None
        row = rows[0]
        return IdempotentResponse(
            row["settlement_id"], row["request_hash"], int(row["status"]), row["response"].encode()
        )

    async def remember(
        self,
        key: str,
        settlement_id: str,
        request_hash: str,
        status: int,
        body: bytes,
        valid_before: int | None,
    ) -> None:
        """Keep the answer under ``key``, unless one is kept already (the first one stays)."""
        now = time.time()
        await self.db.execute(
            "INSERT INTO idempotency_keys (idem_key, settlement_id, request_hash, status,"
            " response, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (idem_key) DO NOTHING",
            key,
            settlement_id,
            request_hash,
            status,
            body.decode(),
            now,
            self._expiry(valid_before, now),
        )
