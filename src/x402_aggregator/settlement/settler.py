"""The foreground settle: idempotency replays, one flight per payment, the claim, the answer.

The rules (``docs/settlement.md``): every attempt is on disk before it is sent; a payment that
may have moved money is never sent to a second upstream on a guess, only the chain or the same
upstream can say what happened; exactly one caller is ever told ``success: true`` for a payment
(bar explicit idempotency-key replays).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

import orjson

from .._types import JSONObject
from ..errors import LedgerError, RequestError, UnrecordedSettle
from ..ledger import Payment, Record
from ..protocol import PaymentRequest, failure_body
from ..replies import Reply, outcome_unknown, result_of
from ..routing import Attempt
from ..schemes import canonical_hash
from .answers import already_settled, from_record, id_header, idempotency_key_of
from .context import SettleContext
from .resolver import Resolver
from .resume import resume
from .run import SettleRun

logger = logging.getLogger("x402_aggregator.settlement")

REPLAYED_HEADER = (b"idempotent-replayed", b"true")
IDEMPOTENCY_MISMATCH = "idempotency_key_reused"
LEDGER_UNAVAILABLE = "ledger_unavailable"
#: Results an idempotency key replays; the others (unknown, pending, nothing reached) may change.
_FINAL_RESULTS = frozenset({"settled", "failed", "duplicate"})


class Settler:
    """Settles payments for the engine, with the ledger as the only source of truth."""

    def __init__(self, context: SettleContext) -> None:
        self.context = context
        self.ledger = context.ledger
        self.resolver = Resolver(context)
        #: Settles in flight in this process, by payment: copies wait for the first.
        self._flights: dict[str, asyncio.Future[Reply]] = {}
        self._resolving: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None

    @property
    def unresolved(self) -> int:
        """Settles whose outcome is not known yet (ambiguous or pending on chain)."""
        return self.context.unresolved

    async def start(self) -> None:
        """Open the ledger (once; also on first use) and start resolving in the background."""
        if self._opening is None:
            self._opening = asyncio.create_task(self._open())
        opening = self._opening
        try:
            await asyncio.shield(opening)
        except LedgerError:
            # A database that was down at first use must not stay "down" for good: the next
            # settle tries to open it again.
            if self._opening is opening:
                self._opening = None
            raise

    async def _open(self) -> None:
        await self.ledger.open()
        await self.context.count_unresolved()
        self._resolving = asyncio.create_task(self.resolver.run_forever(), name="settle resolver")

    async def aclose(self) -> None:
        if self._opening is not None:
            await asyncio.gather(self._opening, return_exceptions=True)
        if self._resolving is not None:
            self._resolving.cancel()
            await asyncio.gather(self._resolving, return_exceptions=True)
        await asyncio.gather(*(reader.aclose() for reader in self.context.chains.values()))
        await self.ledger.aclose()

    async def settle(
        self, request: PaymentRequest, plan: Sequence[Attempt], idempotency_key: str | None
    ) -> Reply:
        """Settle a payment along ``plan``: once, recorded, and answered with what is known."""
        # The body is parsed once here for everything the ledger needs to know about it.
        data: JSONObject = orjson.loads(request.body)
        payment = Payment.of(request, data)
        idempotency_key = idempotency_key or idempotency_key_of(data)
        request_hash = canonical_hash(data) if idempotency_key else ""
        try:
            await self.start()
            if idempotency_key is not None:
                replayed = await self._replay(idempotency_key, request_hash)
                if replayed is not None:
                    return replayed
            reply = await self._single_flight(request, payment, plan)
        except UnrecordedSettle as exc:
            logger.critical("a settle was sent but could not be recorded: %s", exc)
            message = "the settlement was sent but the ledger failed to record its outcome"
            return outcome_unknown(request, message, None, 1)
        except LedgerError as exc:
            logger.error("settle refused: the ledger is unavailable: %s", exc)
            message = "the settlement ledger is unavailable; nothing was sent to any facilitator"
            body = failure_body("settle", LEDGER_UNAVAILABLE, message, request.kind.network)
            return Reply(503, orjson.dumps(body), outcome="ledger_unavailable")
        if idempotency_key is not None and reply.outcome in _FINAL_RESULTS:
            await self._remember(idempotency_key, request, payment, request_hash, reply)
        return replace(reply, headers=(*reply.headers, id_header(request.identity)))

    async def _replay(self, key: str, request_hash: str) -> Reply | None:
        """Stripe's rules: the same key and body get the recorded answer; another body a 422."""
        stored = await self.ledger.idempotent_response(key)
        if stored is None:
            return None
        if stored.request_hash != request_hash:
            raise RequestError(
                IDEMPOTENCY_MISMATCH,
                "this Idempotency-Key was used with a different request body",
                status=422,
            )
        headers = (REPLAYED_HEADER, id_header(stored.settlement_id))
        outcome = result_of(orjson.loads(stored.body))
        return Reply(stored.status, stored.body, outcome=outcome, headers=headers)

    async def _remember(
        self, key: str, request: PaymentRequest, payment: Payment, request_hash: str, reply: Reply
    ) -> None:
        try:
            await self.ledger.remember_response(
                key, request.identity, request_hash, reply.status, reply.body, payment.valid_before
            )
        except LedgerError as exc:
            # The settle itself is recorded; only a replay by this key is lost. The truth
            # still goes back to the caller.
            logger.error("could not remember the answer for an idempotency key: %s", exc)

    async def _single_flight(
        self, request: PaymentRequest, payment: Payment, plan: Sequence[Attempt]
    ) -> Reply:
        key = request.identity
        first = self._flights.get(key)
        if first is not None:
            # A copy while the first is in flight sends nothing: it shares the first's answer,
            # except a success, which is reported once (the copies get duplicate_settlement).
            reply = await asyncio.shield(first)
            if reply.outcome != "settled":
                return reply
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        try:
            with self.ledger.working(key):
                reply = await self._settle(request, payment, plan)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: copies re-raise it, nobody else needs to
            raise
        finally:
            if self._flights.get(key) is future:
                del self._flights[key]
        future.set_result(reply)
        return reply

    async def _settle(
        self, request: PaymentRequest, payment: Payment, plan: Sequence[Attempt]
    ) -> Reply:
        clock = self.context.clock
        deadline = clock() + self.context.settle_deadline_s
        while True:
            claim = await self.ledger.claim(payment)
            if claim.status == "settled":
                return await already_settled(self.ledger, request, payment, claim.record)
            if claim.status == "fresh":
                run = SettleRun(self.context, request, claim.record, report=True)
                return await run.execute(plan)
            if claim.status == "resume":
                return await resume(self.context, request, payment, claim, report=True)
            record = await self._wait(claim.record, deadline)
            if record is None or record.state == "pending":
                if record is not None and clock() < deadline:
                    continue  # its owner died: claim it
                return outcome_unknown(
                    request,
                    "another aggregator instance is settling this payment and has not finished",
                    None,
                    0,
                )
            if record.state == "settled":
                return await already_settled(self.ledger, request, payment, record)
            return from_record(request, record)

    async def _wait(self, record: Record, deadline: float) -> Record | None:
        """Wait for another instance's settle of the same payment to end (or its owner to die)."""
        pause = 0.025
        while self.context.clock() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
            current = await self.ledger.get(record.id, attempts=False)
            if current is None or current.state != "pending":
                return current
            if await self.ledger.orphaned(current.owner, current.id):
                return current
        return await self.ledger.get(record.id)
