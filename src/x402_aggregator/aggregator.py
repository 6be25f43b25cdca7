"""The engine: route each verify and settle to upstream facilitators, apart from any web framework.

The HTTP server and the in-process SDK client are thin faces over :class:`Aggregator`. It
builds the parts and hands each its collaborators: routing (:mod:`.routing`), health and probes
(:mod:`.health`, :mod:`.probing`), verification (:mod:`.verification`), settlement through the
ledger (:mod:`.settlement`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import orjson

from . import metrics
from ._types import Clock, JSONObject, Operation
from .alerts import Alerts
from .auth import authenticator
from .budget import RetryBudget
from .capabilities import merge_supported
from .chains import readers
from .config import Config
from .errors import RequestError
from .health import UpstreamHealth
from .http1 import Http1Transport
from .ledger import Ledger
from .logs import REQUEST_ID, short
from .outlier import OutlierPolicy
from .probing import Prober
from .protocol import (
    NO_UPSTREAM_AVAILABLE,
    PaymentRequest,
    failure_body,
    network_hint,
    parse_request,
)
from .replies import Reply, result_of
from .routing import Router
from .secrets import Secrets, read_secrets
from .settlement import SettleContext, Settler
from .stats import RECENT_SETTLEMENTS
from .status import iso, timeline, upstreams_status
from .transport import AiohttpTransport, Transport
from .upstream import Upstream
from .verification import Verifier

logger = logging.getLogger("x402_aggregator")


def upstream_transport(client: str, *, pool_size: int = 256) -> Transport:
    """The configured upstream client (``server.upstream_client``)."""
    if client == "aiohttp":
        return AiohttpTransport(pool_size=pool_size)
    return Http1Transport(pool_size=pool_size)


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
        secrets: Secrets | None = None,
    ) -> None:
        self.config = config
        self.secrets = secrets or read_secrets(config, server=False)
        self._transport = transport or upstream_transport(config.server.upstream_client)
        self.router = Router(self._upstreams(clock), config.routing, clock)
        routing = config.routing
        budget = RetryBudget(
            routing.retry_budget_ratio,
            routing.retry_budget_min,
            routing.retry_budget_window_s,
            clock,
        )
        self._prober = Prober(self.router.upstreams, config.health, self._refresh_supported)
        self.alerts = Alerts(
            self.secrets.webhook_url,
            timeout_s=config.alerts.timeout_s,
            queue_size=config.alerts.queue_size,
        )
        self._states = {up.name: up.health.state()[0] for up in self.router.upstreams}
        self._watcher: asyncio.Task[None] | None = None
        self._supported: bytes = orjson.dumps({"kinds": [], "extensions": [], "signers": {}})
        self.totals: dict[str, int] = dict.fromkeys(
            ("verify", "settle", "hedges", "failovers", "ambiguous_settlements"), 0
        )
        self.recent_settlements: deque[JSONObject] = deque(maxlen=RECENT_SETTLEMENTS)
        self.verifier = Verifier(self.router, budget, routing, self.totals, clock)
        self.ledger = Ledger.from_url(
            self.secrets.ledger_url,
            retention_margin_s=config.ledger.retention_margin_s,
            instance_timeout_s=config.ledger.instance_timeout_s,
        )
        self.settler = Settler(
            SettleContext(
                ledger=self.ledger,
                chains=readers(self.secrets.rpc_urls, timeout_s=config.ledger.rpc_timeout_s),
                router=self.router,
                alerts=self.alerts,
                totals=self.totals,
                settle_deadline_s=routing.settle_deadline_s,
                resolve_interval_s=config.ledger.resolve_interval_s,
                clock=clock,
            )
        )

    def _upstreams(self, clock: Clock) -> list[Upstream]:
        health = self.config.health
        policy = OutlierPolicy(**health.outlier.model_dump())
        return [
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
                auth=authenticator(u, self.secrets.values),
            )
            for u in self.config.upstreams
            if u.enabled
        ]

    @property
    def transport(self) -> Transport:
        """The pooled upstream client, shared with anything that calls upstreams for us."""
        return self._transport

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self.router.upstreams

    def upstream(self, name: str) -> Upstream | None:
        return self.router.upstream(name)

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
        pool = max(1, len(self.upstreams))
        transport = upstream_transport(self.config.server.upstream_client, pool_size=pool)
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
            return request, await self.verifier.verify(request, plan)
        reply = await self.settler.settle(request, plan, idempotency_key)
        if reply.outcome != "ledger_unavailable":
            self._note_settlement(request, reply)
        return request, reply

    def _note_settlement(self, request: PaymentRequest, reply: Reply) -> None:
        """Count the settle's result and list it among the recent ones."""
        answer = reply.json()
        result = result_of(answer)
        metrics.SETTLEMENTS.labels(result).inc()
        self.recent_settlements.appendleft(
            {
                "at": iso(time.time()),
                "upstream": reply.upstream,
                "network": request.kind.network,
                "payer": request.payer,
                "result": result,
                "reason": answer.get("errorReason"),
                "transaction": answer.get("transaction") or None,
            }
        )

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
        return {
            "generated_at": iso(time.time()),
            "upstreams": upstreams_status(self.upstreams),
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
        return timeline(self.upstreams, window_s, bucket_s, operation)
