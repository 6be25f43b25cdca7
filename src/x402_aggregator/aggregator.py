"""The engine: route each verify and settle to upstream facilitators, apart from any web framework.

The HTTP server and the in-process SDK client are thin faces over :class:`Aggregator`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from . import metrics
from ._types import Clock, JSONObject, Operation
from .alerts import Alerts
from .budget import RetryBudget
from .capabilities import merge_supported
from .config import AlertsConfig, Config
from .errors import ConfigError, RequestError
from .health import Prober, UpstreamHealth
from .ledger import Ledger
from .logs import REQUEST_ID, short
from .outlier import OutlierPolicy
from .protocol import (
    NO_UPSTREAM_AVAILABLE,
    PaymentRequest,
    failure_body,
    network_hint,
    parse_request,
)
from .replies import Reply, all_failed, relay, result_of
from .routing import Attempt, Router
from .settlement import Settler, chain_readers
from .stats import RECENT_SETTLEMENTS
from .transport import AiohttpTransport, Transport
from .upstream import Outcome, Upstream

logger = logging.getLogger("x402_aggregator")
#: One line per answered request (level INFO); silence it with a higher level for this logger.
access_log = logging.getLogger("x402_aggregator.access")


class Aggregator:
    """Routes verify and settle to upstreams; owns their transport, health and probes."""

    def __init__(
        self,
        config: Config,
        *,
        transport: Transport | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._transport = transport or AiohttpTransport()
        health, routing = config.health, config.routing
        policy = OutlierPolicy(**health.outlier.model_dump())
        upstreams = [
            Upstream(
                u,
                self._transport,
                UpstreamHealth(
                    u.name,
                    policy,
                    unhealthy_threshold=health.unhealthy_threshold,
                    healthy_threshold=health.healthy_threshold,
                    clock=clock,
                ),
            )
            for u in config.upstreams
            if u.enabled
        ]
        self.router = Router(upstreams, routing, clock)
        self.budget = RetryBudget(
            routing.retry_budget_ratio,
            routing.retry_budget_min,
            routing.retry_budget_window_s,
            clock,
        )
        self._prober = Prober(self.router.upstreams, health, self._refresh_supported)
        self.alerts = Alerts(
            webhook_url(config.alerts),
            timeout_s=config.alerts.timeout_s,
            queue_size=config.alerts.queue_size,
        )
        self._states = {up.name: up.health.state()[0] for up in self.router.upstreams}
        self._watcher: asyncio.Task[None] | None = None
        self._supported: bytes = orjson.dumps({"kinds": [], "extensions": [], "signers": {}})
        self.totals: dict[str, int] = {
            "verify": 0,
            "settle": 0,
            "hedges": 0,
            "failovers": 0,
            "ambiguous_settlements": 0,
        }
        self.recent_settlements: deque[JSONObject] = deque(maxlen=RECENT_SETTLEMENTS)
        ledger = config.ledger
        self.ledger = Ledger.from_url(
            ledger_url(config),
            retention_margin_s=ledger.retention_margin_s,
            instance_timeout_s=ledger.instance_timeout_s,
        )
        self.settler = Settler(self, self.ledger, chain_readers(config))

    @property
    def transport(self) -> Transport:
        """The pooled upstream client, shared with anything that calls upstreams for us."""
        return self._transport

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self.router.upstreams

    def upstream(self, name: str) -> Upstream | None:
        return next((up for up in self.upstreams if up.name == name), None)

    async def start(self) -> None:
        """Open the ledger, probe upstreams (up to ``health.startup_wait_s``), keep probing."""
        await self.settler.start()
        await self.alerts.start()
        await self._prober.start()
        self._watcher = asyncio.create_task(self._watch_states(), name="state watcher")

    async def probe_once(self) -> None:
        """Probe every upstream once on a throwaway connection pool, from any event loop.

        For callers that need capabilities before :meth:`start` (the SDK's synchronous
        ``get_supported`` at start-up): the engine's own pool belongs to the loop it starts in.
        """
        transport = AiohttpTransport(pool_size=max(1, len(self.upstreams)))
        try:
            await asyncio.gather(*(self._prober.probe(up, transport) for up in self.upstreams))
        finally:
            await transport.aclose()

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._prober.aclose()
        await self.settler.aclose()
        await self.alerts.aclose()
        await self._transport.aclose()

    async def _watch_states(self, every_s: float = 1.0) -> None:
        """Log and alert when an upstream's state changes (probes, ejections, drains)."""
        while True:
            self.check_states()
            await asyncio.sleep(every_s)

    def check_states(self) -> None:
        for upstream in self.upstreams:
            state, reason = upstream.health.state()
            before = self._states.get(upstream.name)
            if state == before:
                continue
            self._states[upstream.name] = state
            level = logging.INFO if state in ("healthy", "half_open") else logging.WARNING
            fields = {"upstream": upstream.name, "from": before, "to": state, "reason": reason}
            logger.log(
                level,
                "upstream %s is %s: %s",
                upstream.name,
                state,
                reason,
                extra={"fields": fields},
            )
            self.alerts.emit("upstream_state", **fields)

    async def verify(
        self, body: bytes, *, request_id: str | None = None, caller: str | None = None
    ) -> Reply:
        """Verify a payment at the first candidate that gives a usable answer.

        ``caller`` is the name of the caller's API key (access log only), if keys are on.
        """
        return await self._handle("verify", body, request_id, caller=caller)

    async def settle(
        self,
        body: bytes,
        *,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        caller: str | None = None,
    ) -> Reply:
        """Settle a payment through the ledger (see :mod:`.settlement`).

        The settle runs in its own task: if the caller goes away (cancelled), it still
        finishes and its outcome is recorded, instead of being cut off half-way.
        """
        task = asyncio.create_task(
            self._handle("settle", body, request_id, idempotency_key, caller)
        )
        return await asyncio.shield(task)

    def supported(self) -> bytes:
        """The merged ``/supported`` body, from cache: never waits on an upstream."""
        return self._supported

    def drain(self, name: str, drained: bool) -> bool:
        """Take an upstream out of (or back into) rotation; False if there is no such upstream."""
        upstream = self.upstream(name)
        if upstream is None:
            return False
        upstream.health.drained = drained
        logger.warning("upstream %s %s by operator", name, "drained" if drained else "enabled")
        self._refresh_supported()
        return True

    async def _handle(
        self,
        operation: Operation,
        body: bytes,
        request_id: str | None,
        idempotency_key: str | None = None,
        caller: str | None = None,
    ) -> Reply:
        self.totals[operation] += 1
        started = time.perf_counter()
        token = REQUEST_ID.set(request_id)
        try:
            request, reply = await self._route(operation, body, idempotency_key)
        finally:
            REQUEST_ID.reset(token)
        metrics.record_request(operation, reply.outcome)
        if access_log.isEnabledFor(logging.INFO):
            fields = {
                "request_id": request_id,
                "operation": operation,
                "outcome": reply.outcome,
                "status": reply.status,
                "upstream": reply.upstream,
                "attempts": reply.attempts,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "network": request.kind.network if request else None,
                "payer": short(request.payer) if request else None,
            }
            if caller is not None:
                fields["key"] = caller  # the key's configured name, never the key
            access_log.info("%s %s", operation, reply.outcome, extra={"fields": fields})
        return reply

    async def _route(
        self, operation: Operation, body: bytes, idempotency_key: str | None = None
    ) -> tuple[PaymentRequest | None, Reply]:
        try:
            request = parse_request(body, operation)
        except RequestError as exc:
            error = failure_body(operation, exc.reason, exc.message, network_hint(body))
            return None, Reply(exc.status, orjson.dumps(error), outcome="bad_request")
        candidates = self.router.candidates(request)
        kind = request.kind
        if not candidates:
            reason = self.router.unsupported_reason(request)
            message = f"no upstream supports x402 v{kind.version} {kind.scheme} on {kind.network}"
            unsupported = failure_body(operation, reason, message, kind.network)
            return request, Reply(200, orjson.dumps(unsupported), outcome="unsupported")
        plan = self.router.plan(request, operation, candidates)
        if not plan:
            message = "every upstream that supports this payment is drained by the operator"
            drained = failure_body(operation, NO_UPSTREAM_AVAILABLE, message, kind.network)
            return request, Reply(503, orjson.dumps(drained), outcome="no_upstream")
        if operation == "verify":
            return request, await self._verify(request, plan)
        return request, await self._settle(request, plan, idempotency_key)

    async def _verify(self, request: PaymentRequest, plan: Sequence[Attempt]) -> Reply:
        self.budget.request()
        run = _VerifyRun(self, request, plan)
        outcome = await run.execute()
        if outcome is None:
            return all_failed("verify", request, run.failed, run.stopped_by)
        valid = bool(outcome.answer and outcome.answer.get("isValid"))
        if valid:
            upstream = self.upstream(outcome.upstream)
            if upstream is not None:
                self.router.remember(request, upstream)
        return relay(outcome, run.attempts, "valid" if valid else "invalid")

    async def _settle(
        self, request: PaymentRequest, plan: Sequence[Attempt], idempotency_key: str | None
    ) -> Reply:
        reply = await self.settler.settle(request, plan, idempotency_key)
        if reply.outcome != "ledger_unavailable":
            answer = reply.json()
            self._note_settlement(request, reply, answer, result_of(answer))
        return reply

    def _note_settlement(
        self, request: PaymentRequest, reply: Reply, answer: JSONObject, result: str
    ) -> None:
        """Count the settle's result and list it among the recent ones."""
        metrics.SETTLEMENTS.labels(result).inc()
        self.recent_settlements.appendleft(
            {
                "at": _iso(time.time()),
                "upstream": reply.upstream,
                "network": request.kind.network,
                "payer": request.payer,
                "result": result,
                "reason": answer.get("errorReason"),
                "transaction": answer.get("transaction") or None,
            }
        )

    def _claim(self, attempt: Attempt, request: PaymentRequest) -> bool | None:
        """Claim an available upstream (True), or send anyway in panic mode (False).

        None: the upstream became unavailable since planning (e.g. another request took its
        half-open trial); it is skipped now and only reached through panic mode.
        """
        if attempt.panic:
            return False
        return True if attempt.upstream.health.claim(request.kind.network) else None

    async def _attempt(
        self,
        upstream: Upstream,
        operation: Operation,
        request: PaymentRequest,
        timeout_s: float,
        claimed: bool,
    ) -> Outcome:
        network = request.kind.network
        try:
            outcome = await upstream.call(operation, request, timeout_s=timeout_s)
        except BaseException:
            # A hedge that lost (cancelled), or a bug: no outcome to count, but a claimed
            # half-open trial must be given back or the upstream would stay out for good.
            if claimed:
                upstream.health.release(network)
            metrics.UPSTREAM_REQUESTS.labels(upstream.name, operation, "cancelled").inc()
            raise
        upstream.health.record(outcome, network)
        metrics.record_attempt(upstream.name, outcome)
        usable = outcome.kind in ("ok", "rejected") or outcome.answer is not None
        upstream.stats.add(operation, outcome.elapsed_s * 1000, usable)
        if outcome.kind == "retryable":
            logger.warning(
                "%s at %s failed, trying the next upstream: %s",
                operation,
                upstream.name,
                outcome.error,
            )
        return outcome

    def _refresh_supported(self) -> None:
        with_caps = [up for up in self.upstreams if up.capabilities is not None]
        # Advertise what the live upstreams can do; if none is live, the last known view beats
        # an empty list, which would make resource servers starting now refuse every payment.
        live = [
            up for up in with_caps if up.health.probe_state != "unhealthy" and not up.health.drained
        ] or with_caps
        merged = merge_supported(up.capabilities for up in live if up.capabilities is not None)
        self._supported = orjson.dumps(merged)

    def status(self) -> JSONObject:
        """A JSON-ready snapshot of every upstream; contains no secrets."""
        upstreams = [_upstream_status(up) for up in self.upstreams]
        recent_total = sum(u["recent"]["requests"] for u in upstreams)
        for entry in upstreams:
            share = entry["recent"]["requests"] / recent_total if recent_total else None
            entry["traffic_share"] = round(share, 4) if share is not None else None
        return {
            "generated_at": _iso(time.time()),
            "upstreams": upstreams,
            "totals": {"requests": dict(self.totals)},
            "recent_settlements": list(self.recent_settlements),
            "ledger": {
                "backend": self.ledger.db.dialect,
                "location": self.ledger.db.display,
                "unresolved": self.settler.unresolved,
            },
        }

    def timeline(
        self, window_s: float = 600, bucket_s: float = 10, operation: Operation | None = None
    ) -> JSONObject:
        """Per upstream, calls and latency in time buckets, for the dashboard's chart."""
        return {
            "generated_at": _iso(time.time()),
            "window_s": window_s,
            "bucket_s": bucket_s,
            "operation": operation,
            "upstreams": {
                up.name: up.stats.timeline(window_s, bucket_s, operation) for up in self.upstreams
            },
        }


class _VerifyRun:
    """One verify: failover on unusable answers, hedging when the current attempt is slow.

    The first definitive answer (valid, or a rejection about the payment) wins and the other
    attempts in flight are cancelled. Hedges and panic-mode retries come out of the retry budget.
    """

    def __init__(self, engine: Aggregator, request: PaymentRequest, plan: Sequence[Attempt]):
        self.engine = engine
        self.request = request
        self.queue = deque(plan)
        self.routing = engine.config.routing
        self.deadline = engine._clock() + self.routing.verify_deadline_s
        #: Attempts in flight, with when each started.
        self.pending: dict[asyncio.Task[Outcome], tuple[Upstream, float]] = {}
        self.hedging_allowed = True
        self.failed: list[Outcome] = []
        self.fallback: Outcome | None = None
        self.attempts = 0
        self.stopped_by: str | None = None

    async def execute(self) -> Outcome | None:
        try:
            self._launch()
            while self.pending:
                done, _ = await asyncio.wait(
                    self.pending, timeout=self._hedge_delay(), return_when=FIRST_COMPLETED
                )
                if not done:
                    if self._launch(hedge=True) is False:
                        self.hedging_allowed = False
                    continue
                for task in done:
                    _, started = self.pending.pop(task)
                    outcome = task.result()
                    if outcome.kind in ("ok", "rejected"):
                        self._overtaken(started)
                        return outcome
                    self.failed.append(outcome)
                    # An upstream-side rejection is kept in case no other upstream does better;
                    # an "isValid: true" under a 5xx/429/3xx status is never trusted.
                    answer = outcome.answer
                    if self.fallback is None and answer is not None and not answer["isValid"]:
                        self.fallback = outcome
                if not self.pending:
                    self._launch()
            return self.fallback
        finally:
            for task in self.pending:
                task.cancel()
            if self.pending:
                await asyncio.gather(*self.pending, return_exceptions=True)

    def _overtaken(self, winner_started: float) -> None:
        """Count attempts that started before the winner and still had no answer as failures.

        Otherwise a hung upstream whose calls are always cancelled by hedges would never be
        ejected, and every request would keep paying the hedge delay.
        """
        now = time.perf_counter()
        network = self.request.kind.network
        for task, (upstream, started) in list(self.pending.items()):
            if started < winner_started and not task.done():
                waited_ms = (now - started) * 1000
                upstream.health.record(
                    Outcome(
                        "retryable",
                        upstream.name,
                        now - started,
                        error=f"no answer after {waited_ms:.0f} ms, when a hedge had already won",
                        operation="verify",
                    ),
                    network,
                )

    def _hedge_delay(self) -> float | None:
        # Hedge only to an available upstream: a hedge to an ejected one could get the slower
        # but healthy first attempt counted as overtaken.
        if not (self.routing.hedge and self.hedging_allowed and self.queue):
            return None
        if self.queue[0].panic:
            return None
        if self.routing.hedge_after_ms is not None:
            delay_ms = self.routing.hedge_after_ms
        else:
            newest, _ = next(reversed(self.pending.values()))
            delay_ms = newest.health.adaptive_hedge_ms(self.routing.hedge_floor_ms)
        return delay_ms / 1000

    def _launch(self, *, hedge: bool = False) -> bool:
        """Start the next attempt; False when none may start (no candidate, budget, deadline)."""
        engine = self.engine
        while self.queue:
            remaining = self.deadline - engine._clock()
            if remaining <= 0:
                return self._stop("the verify deadline passed")
            attempt = self.queue[0]
            # Extra attempts that add load where it may hurt come out of the budget: hedges
            # (speculative) and panic-mode calls to upstreams already known to be sick. Failing
            # over to a healthy upstream after a failure is what the aggregator is for.
            budgeted = hedge or attempt.panic
            if self.attempts and budgeted and not engine.budget.try_acquire():
                return self._stop("the retry budget is exhausted")
            self.queue.popleft()
            claimed = engine._claim(attempt, self.request)
            if claimed is None:
                self.queue.append(Attempt(attempt.upstream, panic=True))
                continue
            if self.attempts:
                engine.totals["hedges" if hedge else "failovers"] += 1
                if hedge:
                    metrics.HEDGES.inc()
                else:
                    metrics.FAILOVERS.labels("verify").inc()
            self.attempts += 1
            task = asyncio.create_task(
                engine._attempt(attempt.upstream, "verify", self.request, remaining, claimed)
            )
            self.pending[task] = (attempt.upstream, time.perf_counter())
            return True
        return False

    def _stop(self, why: str) -> bool:
        self.stopped_by = why
        self.queue.clear()
        return False


def ledger_url(config: Config) -> str:
    """The ledger's URL, from the file or (for URLs with a password) the environment."""
    if config.ledger.url_env:
        url = os.environ.get(config.ledger.url_env, "")
        if not url:
            raise ConfigError(
                f"ledger.url_env names environment variable {config.ledger.url_env}, "
                "which is not set"
            )
        return url
    return config.ledger.url


def webhook_url(config: AlertsConfig) -> str | None:
    """The alert webhook, from the file or (for URLs that carry a token) the environment."""
    if config.webhook_url_env:
        url = os.environ.get(config.webhook_url_env, "")
        if not url:
            raise ConfigError(
                f"alerts.webhook_url_env names environment variable {config.webhook_url_env}, "
                "which is not set"
            )
        return url
    return str(config.webhook_url) if config.webhook_url else None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _upstream_status(upstream: Upstream) -> JSONObject:
    health, caps = upstream.health, upstream.capabilities
    state, reason = health.state()
    breaker = health.breaker
    return {
        "name": upstream.name,
        "url": upstream.display_url,
        "priority": upstream.config.priority,
        "weight": upstream.config.weight,
        "state": state,
        "reason": reason,
        "probe": {
            "state": health.probe_state,
            "consecutive_failures": health.probe_failures,
            "consecutive_successes": health.probe_successes,
            "last_error": health.last_probe_error,
            "last_at": _iso(health.last_probe_at),
        },
        "breaker": {
            "state": breaker.state,
            "consecutive_failures": breaker.consecutive_failures,
            "ejections": breaker.ejections,
            "ejected_for_s": round(breaker.remaining_s(), 3),
            "last_ejection_reason": breaker.last_ejection_reason,
            "last_ejected_at": _iso(breaker.last_ejected_at),
        },
        "networks": health.network_status(),
        "kinds": caps.describe() if caps is not None else None,
        "signers": caps.signers if caps is not None else None,
        "extensions": list(caps.extensions) if caps is not None else None,
        "requests": health.requests,
        "failures": health.failures,
        "last_error": health.last_error,
        "last_error_at": _iso(health.last_error_at),
        "latency_ewma_ms": health.latency_ewma_ms,
        "recent": upstream.stats.summary(),
    }
