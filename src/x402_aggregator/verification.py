"""Verifying a payment: failover on unusable answers, hedging when an attempt is slow.

Verify has no side effects, so any candidate may be asked. The first definitive answer (valid,
or a rejection about the payment) wins and the other attempts in flight are cancelled. Hedges
and panic-mode retries come out of the retry budget.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Sequence

from . import attempts, metrics
from ._types import Clock
from .budget import RetryBudget
from .config import RoutingConfig
from .outcome import Outcome
from .protocol import PaymentRequest
from .replies import Reply, all_failed, relay
from .routing import Attempt, Router
from .upstream import Upstream


class Verifier:
    """Verifies payments along routing plans; remembers who verified what, for settle."""

    def __init__(
        self,
        router: Router,
        budget: RetryBudget,
        config: RoutingConfig,
        totals: dict[str, int],
        clock: Clock = time.monotonic,
    ) -> None:
        self.router = router
        self.budget = budget
        self.config = config
        self.totals = totals
        self.clock = clock

    async def verify(self, request: PaymentRequest, plan: Sequence[Attempt]) -> Reply:
        """The first usable answer along ``plan``, or a 502 listing each upstream's failure."""
        self.budget.request()
        run = _VerifyRun(self, request, plan)
        outcome = await run.execute()
        if outcome is None:
            return all_failed("verify", request, run.failed, run.stopped_by)
        valid = bool(outcome.answer and outcome.answer.get("isValid"))
        if valid:
            upstream = self.router.upstream(outcome.upstream)
            if upstream is not None:
                self.router.remember(request, upstream)
        return relay(outcome, run.attempts, "valid" if valid else "invalid")


class _VerifyRun:
    """One verify's attempts: launched in plan order, the next one early if the current is slow."""

    def __init__(self, verifier: Verifier, request: PaymentRequest, plan: Sequence[Attempt]):
        self.verifier = verifier
        self.request = request
        self.queue = deque(plan)
        self.routing = verifier.config
        self.deadline = verifier.clock() + self.routing.verify_deadline_s
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
                winner = self._collect(done)
                if winner is not None:
                    return winner
                if not self.pending:
                    self._launch()
            return self.fallback
        finally:
            for task in self.pending:
                task.cancel()
            if self.pending:
                await asyncio.gather(*self.pending, return_exceptions=True)

    def _collect(self, done: set[asyncio.Task[Outcome]]) -> Outcome | None:
        """The first definitive answer among ``done``; the others are kept as failures."""
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
        return None

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
        verifier = self.verifier
        while self.queue:
            remaining = self.deadline - verifier.clock()
            if remaining <= 0:
                return self._stop("the verify deadline passed")
            attempt = self.queue[0]
            # Extra attempts that add load where it may hurt come out of the budget: hedges
            # (speculative) and panic-mode calls to upstreams already known to be sick. Failing
            # over to a healthy upstream after a failure is what the aggregator is for.
            budgeted = hedge or attempt.panic
            if self.attempts and budgeted and not verifier.budget.try_acquire():
                return self._stop("the retry budget is exhausted")
            self.queue.popleft()
            claimed = attempts.claim(attempt, self.request)
            if claimed is None:
                self.queue.append(Attempt(attempt.upstream, panic=True))
                continue
            if self.attempts:
                verifier.totals["hedges" if hedge else "failovers"] += 1
                if hedge:
                    metrics.HEDGES.inc()
                else:
                    metrics.FAILOVERS.labels("verify").inc()
            self.attempts += 1
            task = asyncio.create_task(
                attempts.send(attempt.upstream, "verify", self.request, remaining, claimed)
            )
            self.pending[task] = (attempt.upstream, time.perf_counter())
            return True
        return False

    def _stop(self, why: str) -> bool:
        self.stopped_by = why
        self.queue.clear()
        return False
