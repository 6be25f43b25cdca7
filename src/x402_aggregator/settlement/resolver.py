"""The background resolver: unresolved settles looked at again until the evidence is in.

Ambiguous and pending-on-chain records are resumed with exponential back-off (the chain, or
the upstream that may have the payment, is asked again); pending records whose owner died are
taken over; records past retention are purged.
"""

from __future__ import annotations

import asyncio
import logging

from .. import metrics
from ..errors import LedgerError, RequestError
from ..ledger import Payment, Record
from ..protocol import PaymentRequest, parse_request
from .context import SettleContext
from .resume import resume

logger = logging.getLogger("x402_aggregator.settlement")


class Resolver:
    """Looks at unresolved settles in the background; nobody waits for its answers."""

    def __init__(self, context: SettleContext) -> None:
        self.context = context
        self.ledger = context.ledger

    async def run_forever(self) -> None:
        # The first pass, at start-up, looks at every unresolved record whatever its schedule:
        # this process may have what the last one lacked (an RPC, an upstream that is back).
        everything = True
        while True:
            try:
                await self.resolve_due(everything=everything)
                everything = False
            except LedgerError as exc:
                logger.error("could not look at unresolved settlements: %s", exc)
            except Exception:
                logger.exception("the settlement resolver failed; it will try again")
            await asyncio.sleep(self.context.resolve_interval_s)

    async def resolve_due(self, *, everything: bool = False) -> None:
        """Look again at every unresolved settle that is due, then purge what has expired."""
        for record in await self.ledger.due(everything=everything):
            try:
                await self._resolve(record)
            except LedgerError:
                raise
            except Exception:
                logger.exception("could not resolve settlement %s", record.id)
        purged = await self.ledger.purge()
        if purged:
            logger.info("purged %d settlement records past retention", purged)
        await self.context.count_unresolved()

    async def _resolve(self, record: Record) -> None:
        try:
            request = parse_request(record.request, "settle")
        except RequestError:
            request = None
        if request is None or request.identity != record.id:
            logger.error("settlement %s has an unreadable request; left for an operator", record.id)
            await self.ledger.defer(record, "unreadable record: left for an operator", 86400)
            return
        if self.ledger.busy[record.id]:
            return  # a settle of it is running here right now
        with self.ledger.working(record.id):
            await self._resolve_claimed(record, request)

    async def _resolve_claimed(self, record: Record, request: PaymentRequest) -> None:
        payment = Payment.of(request)
        claim = await self.ledger.claim(payment)
        if claim.status in ("settled", "busy"):
            return
        if claim.status == "fresh":
            # Abandoned before anything was sent (or after definitive failures): nothing moved.
            await self.ledger.finish(
                claim.record, "failed", note="abandoned before any attempt reached an upstream"
            )
            return
        before = claim.previous
        reply = await resume(self.context, request, payment, claim, report=False)
        result = reply.outcome
        if result in ("settled", "failed"):
            logger.warning(
                "settlement %s resolved: %s (was %s)",
                record.id,
                result,
                before,
                extra={"fields": {"settlement": record.id, "result": result}},
            )
            self.context.alerts.emit(
                "settlement_resolved",
                settlement=record.id,
                result=result,
                transaction=reply.json().get("transaction") or None,
                network=record.network,
            )
            metrics.SETTLEMENTS_RESOLVED.labels(result).inc()
