"""Settling through the ledger: claim, write ahead, send, resolve from evidence, report once.

The rules (``docs/settlement.md``): every attempt is on disk before it is sent; a payment that
may have moved money is never sent to a second upstream on a guess, only the chain (the
EIP-3009 authorization's state and log) or the same upstream can say what happened; exactly one
caller is ever told ``success: true`` for a payment (bar explicit idempotency-key replays).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from . import metrics
from ._types import JSONObject
from .chain import PUBLIC_RPCS, ChainReader, caip2
from .config import Config
from .errors import ChainError, ConfigError, LedgerError, RequestError, UnrecordedSettle
from .ledger import AttemptEnd, Claim, Ledger, Record, State
from .ledger.records import Payment, canonical_hash, eip3009_authorization
from .protocol import SETTLEMENT_PENDING, PaymentRequest, failure_body, parse_request
from .replies import (
    Reply,
    all_failed,
    duplicate,
    outcome_unknown,
    relay,
    result_of,
    settled_by_chain,
)
from .routing import Attempt
from .upstream import Outcome

if TYPE_CHECKING:
    from .aggregator import Aggregator

logger = logging.getLogger("x402_aggregator.settlement")

SETTLEMENT_ID_HEADER = b"x402-settlement-id"
REPLAYED_HEADER = (b"idempotent-replayed", b"true")
IDEMPOTENCY_MISMATCH = "idempotency_key_reused"
LEDGER_UNAVAILABLE = "ledger_unavailable"
EXPIRED = "invalid_exact_evm_payload_authorization_valid_before"
#: How far past validBefore (by our clock) an unused authorization counts as expired.
EXPIRY_MARGIN_S = 300.0
#: Longest pause between two looks at an unresolved settle.
MAX_BACKOFF_S = 1800.0
#: Results an idempotency key replays; the others (unknown, pending, nothing reached) may change.
_FINAL_RESULTS = frozenset({"settled", "failed", "duplicate"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the chain says about an EIP-3009 authorization."""

    used: bool
    transaction: str | None = None


def chain_readers(config: Config) -> dict[str, ChainReader]:
    """A reader per network: the configured RPCs, then (unless disabled) the public ones."""
    urls: dict[str, str] = dict(PUBLIC_RPCS) if config.ledger.public_rpcs else {}
    for network, entry in config.networks.items():
        url = str(entry.rpc_url) if entry.rpc_url else None
        if entry.rpc_url_env:
            url = os.environ.get(entry.rpc_url_env) or None
            if url is None:
                raise ConfigError(
                    f"networks.{network}.rpc_url_env names {entry.rpc_url_env}, which is not set"
                )
        if url:
            urls[caip2(network)] = url
    timeout = config.ledger.rpc_timeout_s
    return {network: ChainReader(url, timeout_s=timeout) for network, url in urls.items()}


class Settler:
    """Settles payments for the engine, with the ledger as the only source of truth."""

    def __init__(self, engine: Aggregator, ledger: Ledger, chains: dict[str, ChainReader]):
        self.engine = engine
        self.ledger = ledger
        self.chains = chains
        self.config = engine.config.ledger
        #: Settles in flight in this process, by payment: copies wait for the first.
        self._flights: dict[str, asyncio.Future[Reply]] = {}
        #: Settles whose outcome is not known yet (ambiguous or pending on chain), for metrics.
        self.unresolved = 0
        self._resolver: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None

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
        self.unresolved = await self.ledger.count()
        self._resolver = asyncio.create_task(self._resolve_forever(), name="settle resolver")

    async def aclose(self) -> None:
        if self._opening is not None:
            await asyncio.gather(self._opening, return_exceptions=True)
        if self._resolver is not None:
            self._resolver.cancel()
            await asyncio.gather(self._resolver, return_exceptions=True)
        await asyncio.gather(*(reader.aclose() for reader in self.chains.values()))
        await self.ledger.aclose()

    # -- the foreground settle -------------------------------------------------------------

    async def settle(
        self, request: PaymentRequest, plan: Sequence[Attempt], idempotency_key: str | None
    ) -> Reply:
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
            try:
                await self.ledger.remember_response(
                    idempotency_key,
                    request.identity,
                    request_hash,
                    reply.status,
                    reply.body,
                    payment.valid_before,
                )
            except LedgerError as exc:
                # The settle itself is recorded; only a replay by this key is lost. The truth
                # still goes back to the caller.
                logger.error("could not remember the answer for an idempotency key: %s", exc)
        return replace(reply, headers=(*reply.headers, _id_header(request.identity)))

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
        headers = (REPLAYED_HEADER, _id_header(stored.settlement_id))
        outcome = result_of(orjson.loads(stored.body))
        return Reply(stored.status, stored.body, outcome=outcome, headers=headers)

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
        deadline = time.monotonic() + self.engine.config.routing.settle_deadline_s
        while True:
            claim = await self.ledger.claim(payment)
            if claim.status == "settled":
                return await self._already_settled(request, payment, claim.record)
            if claim.status == "fresh":
                return await _Run(self, request, claim.record, report=True).execute(plan)
            if claim.status == "resume":
                return await self._resume(request, payment, claim, report=True)
            record = await self._wait(claim.record, deadline)
            if record is None or record.state == "pending":
                if record is not None and time.monotonic() < deadline:
                    continue  # its owner died: claim it
                return outcome_unknown(
                    request,
                    "another aggregator instance is settling this payment and has not finished",
                    None,
                    0,
                )
            if record.state == "settled":
                return await self._already_settled(request, payment, record)
            return _from_record(request, record)

    async def _wait(self, record: Record, deadline: float) -> Record | None:
        """Wait for another instance's settle of the same payment to end (or its owner to die)."""
        pause = 0.025
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
            current = await self.ledger.get(record.id, attempts=False)
            if current is None or current.state != "pending":
                return current
            if await self.ledger.orphaned(current.owner, current.id):
                return current
        return await self.ledger.get(record.id)

    async def _already_settled(
        self, request: PaymentRequest, payment: Payment, record: Record
    ) -> Reply:
        """Report a success once (it may have been resolved without anyone being told)."""
        same_payment = record.payload_hash == payment.payload_hash
        if (
            not record.reported
            and same_payment
            and record.response is not None
            and await self.ledger.mark_reported(record.id)
        ):
            return Reply(200, record.response, record.upstream, 0, outcome="settled")
        return duplicate(request, record.transaction, record.upstream)

    async def _resume(
        self, request: PaymentRequest, payment: Payment, claim: Claim, *, report: bool
    ) -> Reply:
        """Settle a payment an earlier attempt may have moved: evidence first, then its upstream."""
        record = claim.record
        run = _Run(self, request, record, report=report, doubtful=True)
        previous = claim.previous or "ambiguous"
        if record.payload_hash != payment.payload_hash:
            # Same authorization nonce, different signed payload: it must not steer a payment
            # that may have moved. Leave the record as it was and say what is known.
            await self.ledger.finish(
                record, previous, note=record.note, next_check_at=record.next_check_at
            )
            return _from_record(request, replace(record, state=previous))
        on_chain = previous == "pending_onchain" and record.transaction is not None
        if on_chain and record.transaction is not None:
            receipt_reply = await run.check_receipt(record.transaction)
            if receipt_reply is not None:
                return receipt_reply
        verdict = await run.chain_verdict()
        if verdict is not None and verdict.used:
            return await run.chain_settled(verdict)
        if verdict is not None and run.expired_unused():
            return await run.expired()
        if verdict is not None and not on_chain:
            # Unused on chain: no attempt moved it, and the nonce can be used once: any
            # upstream may try now, the chain decides which attempt wins. (A transaction still
            # waiting to be mined stays with the upstream that sent it.)
            return await run.execute(self._plan(request))
        sticky = self.engine.upstream(record.sticky) if record.sticky else None
        if sticky is None:
            return await run.unknown(
                f"the upstream that may have it ({record.sticky}) is not configured any more"
            )
        return await run.execute([Attempt(sticky, panic=True)])

    def _plan(self, request: PaymentRequest) -> list[Attempt]:
        candidates = self.engine.router.candidates(request)
        return list(self.engine.router.plan(request, "settle", candidates))

    # -- the background resolver --------------------------------------------------------------

    async def _resolve_forever(self) -> None:
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
            await asyncio.sleep(self.config.resolve_interval_s)

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
        self.unresolved = await self.ledger.count()

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
        reply = await self._resume(request, payment, claim, report=False)
        result = reply.outcome
        if result in ("settled", "failed"):
            logger.warning(
                "settlement %s resolved: %s (was %s)",
                record.id,
                result,
                before,
                extra={"fields": {"settlement": record.id, "result": result}},
            )
            self.engine.alerts.emit(
                "settlement_resolved",
                settlement=record.id,
                result=result,
                transaction=reply.json().get("transaction") or None,
                network=record.network,
            )
            metrics.SETTLEMENTS_RESOLVED.labels(result).inc()


class _Run:
    """One pass over a plan for a claimed payment: every step written down before it is taken."""

    def __init__(
        self,
        settler: Settler,
        request: PaymentRequest,
        record: Record,
        *,
        report: bool,
        doubtful: bool = False,
    ) -> None:
        self.settler = settler
        self.engine = settler.engine
        self.ledger = settler.ledger
        self.request = request
        self.record = record
        #: Tell the caller about a success (False in the background: nobody is listening).
        self.report = report
        #: An attempt may already have moved the payment: a refusal proves nothing any more.
        self.doubtful = doubtful
        self.n = record.attempt_count
        self.sent = 0
        self.reader = settler.chains.get(caip2(request.kind.network))

    async def execute(self, plan: Sequence[Attempt]) -> Reply:
        try:
            return await self._execute(plan)
        except LedgerError as exc:
            if self.sent:
                raise UnrecordedSettle(str(exc)) from exc
            raise

    async def _execute(self, plan: Sequence[Attempt]) -> Reply:
        engine = self.engine
        failed: list[Outcome] = []
        deadline = engine._clock() + engine.config.routing.settle_deadline_s
        queue = deque(plan)
        last: str | None = None
        while queue:
            attempt = queue.popleft()
            remaining = deadline - engine._clock()
            if remaining <= 0:
                break
            claimed = engine._claim(attempt, self.request)
            if claimed is None:  # it became unavailable: reached only in panic mode
                queue.append(Attempt(attempt.upstream, panic=True))
                continue
            if self.sent:
                engine.totals["failovers"] += 1
                metrics.FAILOVERS.labels("settle").inc()
            self.n += 1
            name = attempt.upstream.name
            try:
                await self.ledger.begin_attempt(self.record, self.n, "settle", name)
            except BaseException:
                if claimed:
                    attempt.upstream.health.release(self.request.kind.network)
                raise
            self.sent += 1  # from here on, the upstream may act on it
            outcome = await engine._attempt(
                attempt.upstream, "settle", self.request, remaining, claimed
            )
            ended = _ended(self.n, outcome)
            last = name
            if outcome.kind == "retryable":  # provably never arrived
                await self.ledger.end_attempt(self.record, ended)
                failed.append(outcome)
                continue
            if outcome.kind == "ok":
                return await self._settled(relay(outcome, self.sent), outcome.answer, ended)
            if outcome.kind == "rejected" and not self.doubtful:
                reply = replace(relay(outcome, self.sent), outcome="failed")
                return await self._finish(reply, "failed", response=reply.body, attempt=ended)
            answer = outcome.answer or {}
            if answer.get("errorReason") == SETTLEMENT_PENDING and answer.get("transaction"):
                await self.ledger.end_attempt(self.record, ended)
                return await self._pending(outcome)
            await self.ledger.end_attempt(self.record, ended)
            verdict = await self.chain_verdict()
            if verdict is not None and verdict.used:
                return await self.chain_settled(verdict)
            self.doubtful = True
            if verdict is not None and outcome.kind == "ambiguous":
                logger.warning(
                    "settle at %s is ambiguous but the authorization is unused on chain: "
                    "failing over is money-safe",
                    name,
                )
                continue
            if verdict is not None and self.expired_unused():
                return await self.expired()
            return await self.unknown(_why(outcome), name)
        if self.doubtful:
            return await self.unknown("no upstream could confirm an earlier attempt", last)
        reply = all_failed(
            "settle", self.request, failed, "the settle deadline passed" if queue else None
        )
        return await self._finish(
            reply, "failed", response=reply.body, note="no upstream was reached"
        )

    async def _settled(self, reply: Reply, answer: JSONObject | None, ended: AttemptEnd) -> Reply:
        transaction = str((answer or {}).get("transaction") or "") or None
        return await self._record_settled(replace(reply, outcome="settled"), transaction, ended)

    async def chain_settled(self, verdict: Verdict) -> Reply:
        assert verdict.transaction is not None
        note = "resolved from the chain: the authorization's AuthorizationUsed log"
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
        return await self._finish(
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
        reply = await self._finish(
            reply,
            "pending_onchain",
            transaction=transaction,
            response=reply.body,
            note=f"transaction {transaction} sent by {outcome.upstream}, not confirmed yet",
            next_check_at=self._next_check_at(),
            checks=self.record.checks + 1,
        )
        self.settler.unresolved = await self.ledger.count()
        return reply

    async def check_receipt(self, transaction: str) -> Reply | None:
        """A mined, successful transaction settles it; anything else leaves it as it is."""
        if self.reader is None:
            return None
        self.n += 1
        await self.ledger.begin_attempt(self.record, self.n, "chain", self._rpc)
        try:
            receipt = await self.reader.receipt(transaction)
        except (ChainError, ValueError) as exc:
            await self.ledger.end_attempt(self.record, AttemptEnd(self.n, "error", error=str(exc)))
            logger.warning("could not read the receipt of %s: %s", transaction, exc)
            return None
        if receipt is None:
            outcome = "receipt_none"
        else:
            outcome = "receipt_ok" if receipt.succeeded else "receipt_reverted"
        await self.ledger.end_attempt(
            self.record, AttemptEnd(self.n, outcome, transaction=transaction)
        )
        if receipt is None or not receipt.succeeded:
            return None
        return await self._proven(
            receipt.transaction, f"confirmed by its receipt (block {receipt.block})"
        )

    @property
    def _rpc(self) -> str:
        """How chain reads are named in the attempts (never the RPC's URL: it may hold a key)."""
        return f"rpc:{caip2(self.request.kind.network)}"

    async def chain_verdict(self) -> Verdict | None:
        """Ask the token whether the authorization was used (and by which transaction).

        None when the chain cannot say: no RPC for the network, not an EIP-3009 payment, or
        the RPC failed. The read is recorded as an attempt, for the audit trail.
        """
        if self.reader is None or self.record.asset is None:
            return None
        # Parsed here, not per settle: only an unclear outcome with an RPC gets this far.
        auth = eip3009_authorization(orjson.loads(self.request.body)["paymentPayload"])
        asset = self.record.asset
        if auth is None:
            return None
        self.n += 1
        await self.ledger.begin_attempt(self.record, self.n, "chain", self._rpc)
        try:
            used = await self.reader.authorization_used(asset, auth["from"], str(auth["nonce"]))
            transaction = (
                await self.reader.find_authorization(asset, auth["from"], str(auth["nonce"]))
                if used
                else None
            )
        except (ChainError, ValueError, KeyError) as exc:
            await self.ledger.end_attempt(self.record, AttemptEnd(self.n, "error", error=str(exc)))
            logger.warning("chain read for settlement %s failed: %s", self.record.id, exc)
            return None
        outcome = "used" if used else "unused"
        await self.ledger.end_attempt(
            self.record, AttemptEnd(self.n, outcome, transaction=transaction)
        )
        if used and transaction is None:
            logger.error(
                "settlement %s: the authorization is used but its log was not found", self.record.id
            )
            return None  # moved for sure, but no transaction to report: stays unresolved
        return Verdict(used, transaction)

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
        reply = await self._finish(
            reply,
            "ambiguous",
            note=why,
            next_check_at=self._next_check_at(),
            checks=self.record.checks + 1,
        )
        if self.report and reply.outcome == "unknown":
            self.engine.totals["ambiguous_settlements"] += 1
            self.engine.alerts.emit(
                "settlement_ambiguous",
                settlement=self.record.id,
                upstream=where,
                network=self.request.kind.network,
                payer=self.request.payer,
                reason=why,
            )
        self.settler.unresolved = await self.ledger.count()
        return reply

    async def expired(self) -> Reply:
        """Unused on chain and past validBefore: nothing moved and nothing ever can."""
        message = "the authorization expired unused: no transfer happened and none can happen now"
        body = orjson.dumps(failure_body("settle", EXPIRED, message, self.request.kind.network))
        reply = Reply(200, body, None, self.sent, outcome="failed")
        return await self._finish(reply, "failed", response=body, note="expired unused on chain")

    async def _finish(self, reply: Reply, state: State, **fields: Any) -> Reply:
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
            return await self.settler._already_settled(self.request, self.record, current)
        if current is not None and current.state in ("failed", "ambiguous", "pending_onchain"):
            return _from_record(self.request, current)
        message = "another aggregator instance took this settle over and has not finished it"
        return outcome_unknown(self.request, message, reply.upstream, self.sent)

    def expired_unused(self) -> bool:
        """Past validBefore (the chain said unused): no facilitator can ever move it now.

        Judged with a margin: our clock may run ahead of the chain's block timestamps.
        """
        valid_before = self.record.valid_before
        return valid_before is not None and time.time() > valid_before + EXPIRY_MARGIN_S

    def _next_check_at(self) -> float:
        """Unresolved records are looked at again with exponential back-off."""
        interval = self.settler.config.resolve_interval_s
        delay: float = min(interval * 2.0**self.record.checks, MAX_BACKOFF_S)
        return time.time() + delay


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


def _from_record(request: PaymentRequest, record: Record) -> Reply:
    """Answer from what another instance recorded (a failure, or still unknown/pending)."""
    if record.state == "failed" and record.response is not None:
        outcome = result_of(orjson.loads(record.response))
        status = 502 if outcome == "no_upstream" else 200
        return Reply(status, record.response, record.upstream, 0, outcome=outcome)
    if record.state == "pending_onchain" and record.response is not None:
        return Reply(200, record.response, record.upstream, 0, outcome="pending")
    message = (
        f"another settle of this payment ended {record.state}"
        f"{f' ({record.note})' if record.note else ''}; settle it again later"
    )
    return outcome_unknown(request, message, record.upstream, 0)


def _id_header(settlement_id: str) -> tuple[bytes, bytes]:
    # The id is built from fields of the caller's payload: percent-encode anything that is not
    # plainly safe, so that no byte of it can break the header (CR, LF, non-ASCII).
    return (SETTLEMENT_ID_HEADER, quote(settlement_id, safe="|:").encode("ascii"))


def idempotency_key_of(data: JSONObject) -> str | None:
    """The ``payment-identifier`` extension's id, which the SDKs send as an idempotency key."""
    payload = data.get("paymentPayload")
    extensions = payload.get("extensions") if isinstance(payload, dict) else None
    entry = extensions.get("payment-identifier") if isinstance(extensions, dict) else None
    if not isinstance(entry, dict):
        return None
    info = entry.get("info")
    value = info.get("id") if isinstance(info, dict) else entry.get("id")
    return f"payment-identifier:{value}" if isinstance(value, str) and value else None
