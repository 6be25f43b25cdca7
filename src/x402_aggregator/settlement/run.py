"""One pass over a settle plan for a claimed payment: every step written down before it is taken.

A request that provably never reached an upstream (refused, connect timeout) moves on to the
next one. After anything else the payment may have moved: the chain decides (moved: success;
unused: failing over is money-safe), else the answer is "outcome unknown" and the record stays
with the upstream that may have it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson

from .. import attempts, metrics
from .._types import JSONObject
from ..errors import LedgerError, UnrecordedSettle
from ..ledger import AttemptEnd, Record, State
from ..outcome import Outcome
from ..protocol import SETTLEMENT_PENDING, PaymentRequest, failure_body
from ..replies import Reply, all_failed, outcome_unknown, relay, settled_by_chain
from ..routing import Attempt
from ..schemes import Evidence
from . import evidence
from .answers import already_settled, from_record
from .context import SettleContext
from .journal import Journal

logger = logging.getLogger("x402_aggregator.settlement")


class SettleRun:
    """Settles one claimed payment along a plan, and records how it ended."""

    def __init__(
        self,
        context: SettleContext,
        request: PaymentRequest,
        record: Record,
        *,
        report: bool,
        doubtful: bool = False,
    ) -> None:
        self.context = context
        self.ledger = context.ledger
        self.request = request
        self.record = record
        self.journal = Journal(context.ledger, record)
        #: Tell the caller about a success (False in the background: nobody is listening).
        self.report = report
        #: An attempt may already have moved the payment: a refusal proves nothing any more.
        self.doubtful = doubtful
        #: Settle attempts sent to upstreams by this run.
        self.sent = 0
        self.reader = context.reader(request)

    async def execute(self, plan: Sequence[Attempt]) -> Reply:
        try:
            return await self._execute(plan)
        except LedgerError as exc:
            if self.sent:
                raise UnrecordedSettle(str(exc)) from exc
            raise

    async def _execute(self, plan: Sequence[Attempt]) -> Reply:
        context = self.context
        failed: list[Outcome] = []
        deadline = context.clock() + context.settle_deadline_s
        queue = deque(plan)
        last: str | None = None
        while queue:
            attempt = queue.popleft()
            remaining = deadline - context.clock()
            if remaining <= 0:
                break
            claimed = attempts.claim(attempt, self.request)
            if claimed is None:  # it became unavailable: reached only in panic mode
                queue.append(Attempt(attempt.upstream, panic=True))
                continue
            if self.sent:
                context.totals["failovers"] += 1
                metrics.FAILOVERS.labels("settle").inc()
            outcome = await self._send(attempt, remaining, claimed)
            ended = _ended(self.journal.n, outcome)
            last = attempt.upstream.name
            if outcome.kind == "retryable":  # provably never arrived
                await self.journal.end(ended)
                failed.append(outcome)
                continue
            if outcome.kind == "ok":
                return await self._settled(relay(outcome, self.sent), outcome.answer, ended)
            if outcome.kind == "rejected" and not self.doubtful:
                reply = replace(relay(outcome, self.sent), outcome="failed")
                return await self.finish(reply, "failed", response=reply.body, attempt=ended)
            await self.journal.end(ended)
            answer = outcome.answer or {}
            if answer.get("errorReason") == SETTLEMENT_PENDING and answer.get("transaction"):
                return await self._pending(outcome)
            verdict = await self.prove()
            if verdict is not None and verdict.state == "used":
                return await self.chain_settled(verdict)
            self.doubtful = True
            if verdict is not None and outcome.kind == "ambiguous":
                logger.warning(
                    "settle at %s is ambiguous but the payment is unused on chain: "
                    "failing over is money-safe",
                    last,
                )
                continue
            if verdict is not None and verdict.state == "expired_unused":
                return await self.expired()
            return await self.unknown(_why(outcome), last)
        if self.doubtful:
            return await self.unknown("no upstream could confirm an earlier attempt", last)
        reply = all_failed(
            "settle", self.request, failed, "the settle deadline passed" if queue else None
        )
        return await self.finish(
            reply, "failed", response=reply.body, note="no upstream was reached"
        )

    async def _send(self, attempt: Attempt, remaining: float, claimed: bool) -> Outcome:
        """Write the attempt down, then send it: from then on, the upstream may act on it."""
        try:
            await self.journal.begin("settle", attempt.upstream.name)
        except BaseException:
            if claimed:
                attempt.upstream.health.release(self.request.kind.network)
            raise
        self.sent += 1
        return await attempts.send(attempt.upstream, "settle", self.request, remaining, claimed)

    async def prove(self) -> Evidence | None:
        """What the chain says about the payment (recorded as an attempt); None if it can't say."""
        return await evidence.prove(
            self.journal, self.request, self.reader, self.context.wall_clock()
        )

    async def _settled(self, reply: Reply, answer: JSONObject | None, ended: AttemptEnd) -> Reply:
        transaction = str((answer or {}).get("transaction") or "") or None
        return await self._record_settled(replace(reply, outcome="settled"), transaction, ended)

    async def chain_settled(self, verdict: Evidence) -> Reply:
        assert verdict.transaction is not None
        note = f"resolved from the chain ({self.request.scheme.name}): the payment's transaction"
        return await self._proven(verdict.transaction, note)

    async def _proven(self, transaction: str, note: str) -> Reply:
        """Settled, on the chain's word rather than an upstream's answer."""
        reply = settled_by_chain(self.request, transaction, self.sent)
        return await self._record_settled(reply, transaction, note=note)

    async def _record_settled(
        self,
        reply: Reply,
        transaction: str | None,
        attempt: AttemptEnd | None = None,
        *,
        note: str | None = None,
    ) -> Reply:
        return await self.finish(
            reply,
            "settled",
            transaction=transaction,
            response=reply.body,
            reported=self.report,
            note=note,
            attempt=attempt,
        )

    async def _pending(self, outcome: Outcome) -> Reply:
        """An upstream sent a transaction that is not confirmed: sticky, re-checked later."""
        answer = outcome.answer or {}
        transaction = str(answer.get("transaction"))
        confirmed = await self.check_receipt(transaction)
        if confirmed is not None:
            return confirmed
        reply = replace(relay(outcome, self.sent), outcome="pending")
        reply = await self.finish(
            reply,
            "pending_onchain",
            transaction=transaction,
            response=reply.body,
            note=f"transaction {transaction} sent by {outcome.upstream}, not confirmed yet",
            next_check_at=self.context.next_check_at(self.record.checks),
            checks=self.record.checks + 1,
        )
        await self.context.count_unresolved()
        return reply

    async def check_receipt(self, transaction: str) -> Reply | None:
        """A mined, successful transaction settles it; anything else leaves it as it is."""
        receipt = await evidence.confirmed(self.journal, self.request, self.reader, transaction)
        if receipt is None:
            return None
        return await self._proven(
            receipt.transaction, f"confirmed by its receipt (block {receipt.block})"
        )

    async def unknown(self, why: str, upstream: str | None = None) -> Reply:
        """Nobody knows yet: say so, keep the record ambiguous, look again later."""
        where = upstream or self.record.sticky
        message = (
            f"the settlement may have been executed{f' by {where}' if where else ''} and its "
            f"outcome is not known yet ({why}); it is not retried elsewhere: settle the same "
            "payment again later, or look it up at /settlements/{id}"
        )
        logger.error(
            "settle of %s has an unknown outcome (payer %s, network %s): %s",
            self.record.id,
            self.request.payer,
            self.request.kind.network,
            why,
        )
        reply = outcome_unknown(self.request, message, where, self.sent)
        reply = await self.finish(
            reply,
            "ambiguous",
            note=why,
            next_check_at=self.context.next_check_at(self.record.checks),
            checks=self.record.checks + 1,
        )
        if self.report and reply.outcome == "unknown":
            self.context.totals["ambiguous_settlements"] += 1
            self.context.alerts.emit(
                "settlement_ambiguous",
                settlement=self.record.id,
                upstream=where,
                network=self.request.kind.network,
                payer=self.request.payer,
                reason=why,
            )
        await self.context.count_unresolved()
        return reply

    async def expired(self) -> Reply:
        """Unused on chain and past its deadline: nothing moved and nothing ever can."""
        message = "the payment expired unused: no transfer happened and none can happen now"
        reason = self.request.scheme.expired_reason
        body = orjson.dumps(failure_body("settle", reason, message, self.request.kind.network))
        reply = Reply(200, body, None, self.sent, outcome="failed")
        return await self.finish(reply, "failed", response=body, note="expired unused on chain")

    async def finish(self, reply: Reply, state: State, **fields: Any) -> Reply:
        """Record how the settle ended; the answer stands only if the claim was still ours.

        An instance that thought us dead may have taken the payment over meanwhile (and
        settled it, or be settling it): then the ledger, not our upstream's answer, says what
        the caller may be told, so that a success is still reported once.
        """
        if await self.ledger.finish(self.record, state, **fields) or not self.report:
            return reply
        current = await self.ledger.get(self.record.id)
        if current is not None and current.state == "settled":
            # Our record is this payment (a record is its payment plus what happened to it).
            return await already_settled(self.ledger, self.request, self.record, current)
        if current is not None and current.state in ("failed", "ambiguous", "pending_onchain"):
            return from_record(self.request, current)
        message = "another aggregator instance took this settle over and has not finished it"
        return outcome_unknown(self.request, message, reply.upstream, self.sent)


def _ended(n: int, outcome: Outcome) -> AttemptEnd:
    """How a settle attempt ended, for its row."""
    answer = outcome.answer
    label: str = outcome.kind
    if answer is not None and answer.get("errorReason") == SETTLEMENT_PENDING:
        label = "pending"
    transaction = str(answer.get("transaction") or "") or None if answer else None
    return AttemptEnd(n, label, outcome.status, transaction, answer, outcome.error)


def _why(outcome: Outcome) -> str:
    if outcome.kind == "rejected":
        reason = (outcome.answer or {}).get("errorReason")
        return (
            f"{outcome.upstream} answered {reason} to a payment an earlier attempt may have moved"
        )
    return outcome.error or "no usable answer"
