"""UpstreamHealth: probes, live outcomes per breaker, availability, status and hedge delay."""

from __future__ import annotations

import pytest

from x402_aggregator._types import Operation
from x402_aggregator.health import ProbeState, UpstreamHealth
from x402_aggregator.outcome import Outcome
from x402_aggregator.outlier import OutlierPolicy

from .conftest import FakeClock

NAME = "primary"
A = "eip155:84532"
B = "eip155:8453"
TX = "0x" + "cd" * 32
POLICY = OutlierPolicy(
    consecutive_failures=3,
    failure_rate=0.5,
    window=10,
    min_requests=6,
    base_ejection_s=10.0,
    max_ejection_s=100.0,
)


@pytest.fixture
def health(clock: FakeClock) -> UpstreamHealth:
    return UpstreamHealth(NAME, POLICY, unhealthy_threshold=3, healthy_threshold=2, clock=clock)


def probe_state(health: UpstreamHealth) -> ProbeState:
    """The probe state, read through a call so that mypy does not narrow it between steps."""
    return health.probe_state


# Outcomes as Upstream.call classifies them.


def ok(elapsed_s: float = 0.02, operation: Operation = "verify") -> Outcome:
    answer = (
        {"isValid": True}
        if operation == "verify"
        else {"success": True, "transaction": TX, "network": A}
    )
    return Outcome("ok", NAME, elapsed_s, 200, answer, operation=operation)


def rejected() -> Outcome:
    answer = {"isValid": False, "invalidReason": "insufficient_funds"}
    return Outcome("rejected", NAME, 0.02, 200, answer)


def connect_failure() -> Outcome:
    error = "POST /verify: cannot connect (Connection refused)"
    return Outcome("retryable", NAME, 0.001, error=error, never_arrived=True)


def read_timeout() -> Outcome:
    return Outcome("retryable", NAME, 1.0, error="POST /verify: no answer within 1 s")


def garbage(status: int) -> Outcome:
    error = f"HTTP {status} with a body that is not a facilitator answer (9 bytes)"
    return Outcome("retryable", NAME, 0.02, status, error=error)


def soft_rejection() -> Outcome:
    answer = {"isValid": False, "invalidReason": "invalid_network"}
    return Outcome("retryable", NAME, 0.02, 200, answer, error="HTTP 200: invalid_network")


def server_error_answer() -> Outcome:
    answer = {"isValid": False, "invalidReason": "unexpected_verify_error"}
    error = "HTTP 500: unexpected_verify_error"
    return Outcome("retryable", NAME, 0.02, 500, answer, error=error)


def settlement_pending() -> Outcome:
    answer = {"success": False, "errorReason": "settlement_pending", "transaction": TX}
    error = "HTTP 200: settlement_pending"
    return Outcome("ambiguous", NAME, 3.0, 200, answer, error=error, operation="settle")


def eject_network(health: UpstreamHealth, network: str) -> None:
    """Eject ``network`` only: soft rejections leave the upstream's own breaker closed."""
    for _ in range(POLICY.consecutive_failures):
        health.record(soft_rejection(), network)
    assert health.network(network).state == "open"
    assert health.breaker.state == "closed"


def eject_upstream(health: UpstreamHealth) -> None:
    """Eject the upstream's own breaker (connect failures touch no network breaker)."""
    for _ in range(POLICY.consecutive_failures):
        health.record(connect_failure(), A)
    assert health.breaker.state == "open"


# Active probes.


def test_first_good_probe_makes_unknown_healthy(health: UpstreamHealth) -> None:
    """An unprobed upstream is healthy after its first good probe."""
    assert probe_state(health) == "unknown"
    health.record_probe(None)
    assert probe_state(health) == "healthy"
    assert health.last_probe_at is not None


def test_unhealthy_only_after_threshold_failed_probes(health: UpstreamHealth) -> None:
    """A healthy upstream turns unhealthy only after ``unhealthy_threshold`` failures in a row."""
    health.record_probe(None)
    health.record_probe("timeout")
    health.record_probe("timeout")
    health.record_probe(None)  # the run is broken
    health.record_probe("timeout")
    health.record_probe("timeout")
    assert probe_state(health) == "healthy"
    assert health.available(A)
    health.record_probe("HTTP 503")
    assert probe_state(health) == "unhealthy"
    assert health.last_probe_error == "HTTP 503"
    assert health.last_error == "HTTP 503"
    assert not health.available(A)


def test_unknown_turns_unhealthy_after_threshold_failed_probes(health: UpstreamHealth) -> None:
    """An upstream that never answered a probe turns unhealthy after the threshold too."""
    for _ in range(2):
        health.record_probe("refused")
    assert probe_state(health) == "unknown"
    health.record_probe("refused")
    assert probe_state(health) == "unhealthy"


def test_healthy_again_only_after_threshold_good_probes(health: UpstreamHealth) -> None:
    """An unhealthy upstream recovers only after ``healthy_threshold`` good probes in a row."""
    for _ in range(3):
        health.record_probe("refused")
    health.record_probe(None)
    health.record_probe("refused")  # the run is broken
    health.record_probe(None)
    assert probe_state(health) == "unhealthy"
    health.record_probe(None)
    assert probe_state(health) == "healthy"
    assert health.available(A)


def test_good_probe_half_opens_ejected_breakers(health: UpstreamHealth) -> None:
    """A good probe half-opens the upstream's breaker and every ejected network breaker."""
    eject_network(health, A)
    eject_network(health, B)
    eject_upstream(health)
    health.record_probe(None)
    assert health.breaker.state == "half_open"
    assert health.network(A).state == "half_open"
    assert health.network(B).state == "half_open"
    assert health.available(A)


# Live outcomes.

PRE_FAILED = 1
COUNTED_FAILURE, COUNTED_SUCCESS, NOT_COUNTED = PRE_FAILED + 1, 0, PRE_FAILED
OUTCOMES: list[tuple[str, Outcome, int, int]] = [
    ("ok", ok(), COUNTED_SUCCESS, COUNTED_SUCCESS),
    ("rejected", rejected(), COUNTED_SUCCESS, COUNTED_SUCCESS),
    ("settle-ok", ok(operation="settle"), COUNTED_SUCCESS, COUNTED_SUCCESS),
    ("connect-failure", connect_failure(), COUNTED_FAILURE, NOT_COUNTED),
    # Timeouts, 5xx and garbage may concern one chain only: they count against the network.
    ("read-timeout", read_timeout(), NOT_COUNTED, COUNTED_FAILURE),
    ("5xx-garbage", garbage(502), NOT_COUNTED, COUNTED_FAILURE),
    ("200-garbage", garbage(200), NOT_COUNTED, COUNTED_FAILURE),
    ("soft-rejection", soft_rejection(), COUNTED_SUCCESS, COUNTED_FAILURE),
    ("5xx-answer", server_error_answer(), NOT_COUNTED, COUNTED_FAILURE),
    (
        "refused-us",
        Outcome("retryable", "up", 0.01, 401, {"isValid": False}, error="HTTP 401"),
        COUNTED_FAILURE,
        NOT_COUNTED,
    ),
    ("settlement-pending", settlement_pending(), COUNTED_SUCCESS, COUNTED_SUCCESS),
]


@pytest.mark.parametrize(
    ("outcome", "upstream_failures", "network_failures"),
    [pytest.param(o, u, n, id=name) for name, o, u, n in OUTCOMES],
)
def test_outcome_counts_into_the_right_breakers(
    health: UpstreamHealth, outcome: Outcome, upstream_failures: int, network_failures: int
) -> None:
    """Each kind of outcome is a success, a failure or nothing for each of the two breakers."""
    health.breaker.record(False, "earlier")
    health.network(A).record(False, "earlier")
    health.record(outcome, A)
    assert health.breaker.consecutive_failures == upstream_failures
    assert health.network(A).consecutive_failures == network_failures
    assert B not in health.networks


def test_connect_failures_never_eject_a_network(health: UpstreamHealth) -> None:
    """Refused connections eject the upstream but say nothing about the payment's network."""
    for _ in range(10):
        health.record(connect_failure(), A)
    assert health.breaker.state == "open"
    assert health.network(A).state == "closed"
    assert health.network(A).consecutive_failures == 0


def test_counters_and_last_error(health: UpstreamHealth) -> None:
    """``requests`` counts every outcome, ``failures`` the unusable ones, with the last error."""
    health.record(ok(), A)
    health.record(rejected(), A)
    health.record(settlement_pending(), A)
    assert (health.requests, health.failures, health.last_error) == (3, 0, None)
    health.record(read_timeout(), A)
    health.record(soft_rejection(), B)
    assert (health.requests, health.failures) == (5, 2)
    assert health.last_error == "HTTP 200: invalid_network"
    assert health.last_error_at is not None
    health.record(Outcome("retryable", NAME, 0.01), A)
    assert health.last_error == "retryable"  # no error text: the outcome kind stands in


def test_failures_on_one_network_eject_that_network_only(health: UpstreamHealth) -> None:
    """Upstream-side rejections on network A eject A only; network B stays available."""
    eject_network(health, A)
    assert not health.available(A)
    assert health.available(B)
    assert not health.claim(A)
    assert health.claim(B)


def test_hard_failures_on_one_network_amid_successes_eject_that_network_only(
    health: UpstreamHealth,
) -> None:
    """Timeouts on A interleaved with good answers on B eject A's breaker, not the upstream's."""
    for _ in range(POLICY.consecutive_failures):
        health.record(read_timeout(), A)
        health.record(ok(), B)
    assert health.network(A).state == "open"
    assert health.breaker.state == "closed"
    assert not health.available(A)
    assert health.available(B)


# Availability and claims.


def test_drained_is_unavailable(health: UpstreamHealth) -> None:
    """A drained upstream is neither available nor claimable on any network."""
    health.record_probe(None)
    health.drained = True
    assert not health.available(A)
    assert not health.claim(A)
    health.drained = False
    assert health.available(A)
    assert health.claim(A)


def test_unhealthy_is_unavailable(health: UpstreamHealth) -> None:
    """An upstream whose probes fail is neither available nor claimable."""
    for _ in range(3):
        health.record_probe("refused")
    assert not health.available(A)
    assert not health.claim(B)


def test_open_upstream_breaker_blocks_every_network(health: UpstreamHealth) -> None:
    """An ejected upstream is unavailable on every network."""
    eject_upstream(health)
    assert not health.available(A)
    assert not health.available(B)
    assert not health.claim(B)


def test_half_open_upstream_admits_one_trial_across_networks(
    health: UpstreamHealth, clock: FakeClock
) -> None:
    """A half-open upstream breaker lets one request through, whatever its network."""
    eject_upstream(health)
    clock.advance(POLICY.base_ejection_s)
    assert health.available(A)
    assert health.available(B)
    assert health.claim(A)
    assert not health.available(B)
    assert not health.claim(B)
    assert not health.claim(A)
    health.release(A)
    assert health.claim(B)


def test_half_open_network_admits_one_trial_on_that_network(
    health: UpstreamHealth, clock: FakeClock
) -> None:
    """A half-open network breaker lets one request through on that network; others flow."""
    eject_network(health, A)
    clock.advance(POLICY.base_ejection_s)
    assert health.claim(A)
    assert not health.claim(A)
    assert health.claim(B)
    assert health.claim(B)
    health.release(A)
    assert health.claim(A)


def test_trial_outcome_frees_or_closes_the_network(
    health: UpstreamHealth, clock: FakeClock
) -> None:
    """A good trial on a half-open network closes it; a bad one ejects it again."""
    eject_network(health, A)
    clock.advance(POLICY.base_ejection_s)
    assert health.claim(A)
    health.record(read_timeout(), A)
    assert health.network(A).state == "open"
    assert health.network(A).remaining_s() == 2 * POLICY.base_ejection_s
    clock.advance(2 * POLICY.base_ejection_s)
    assert health.claim(A)
    health.record(ok(), A)
    assert health.network(A).state == "closed"
    assert health.claim(A)
    assert health.claim(A)


def test_connect_failure_gives_back_a_network_trial(
    health: UpstreamHealth, clock: FakeClock
) -> None:
    """A network trial that never reached the upstream does not keep that network blocked."""
    eject_network(health, A)
    clock.advance(POLICY.base_ejection_s)
    assert health.claim(A)
    health.record(connect_failure(), A)
    assert health.breaker.state == "closed"  # one refused connection ejects nothing
    clock.advance(1000)
    assert health.available(A)


# Status.


def test_state_unknown_before_any_probe_or_request(health: UpstreamHealth) -> None:
    """A fresh upstream is "unknown"."""
    assert health.state() == ("unknown", "not probed yet")


def test_state_healthy(health: UpstreamHealth) -> None:
    """After a good probe, or any live outcome, an upstream is "healthy"."""
    health.record(ok(), A)
    assert health.state() == ("healthy", "answering")
    fresh = UpstreamHealth(NAME)
    fresh.record_probe(None)
    assert fresh.state() == ("healthy", "answering")


def test_state_drained_comes_first(health: UpstreamHealth) -> None:
    """A drained upstream reports "drained", even when it is also unhealthy and ejected."""
    for _ in range(3):
        health.record_probe("refused")
    eject_upstream(health)
    health.drained = True
    assert health.state() == ("drained", "drained by operator")


def test_state_unhealthy(health: UpstreamHealth) -> None:
    """An upstream whose probes fail reports "unhealthy" with the count and the last error."""
    eject_upstream(health)
    for _ in range(3):
        health.record_probe("HTTP 503")
    assert health.state() == ("unhealthy", "3 probes failed: HTTP 503")


def test_state_ejected(health: UpstreamHealth) -> None:
    """An upstream with an open breaker reports "ejected" with the breaker's reason."""
    eject_upstream(health)
    state, reason = health.state()
    assert state == "ejected"
    assert reason.startswith("ejected after 3 consecutive failures; last: POST /verify")


def test_state_half_open(health: UpstreamHealth, clock: FakeClock) -> None:
    """Once its ejection time is over, an upstream reports "half_open"."""
    eject_upstream(health)
    clock.advance(POLICY.base_ejection_s)
    assert health.state() == ("half_open", "ejection over: the next request is a trial")


def test_state_is_degraded_when_only_a_network_is_ejected(health: UpstreamHealth) -> None:
    """An ejected network makes the upstream degraded, not ejected, and names the network."""
    health.record_probe(None)
    eject_network(health, A)
    state, reason = health.state()
    assert state == "degraded"
    assert reason.startswith(f"ejected on {A}: ")
    assert health.network_status()[A]["state"] == "ejected"


def test_state_half_open_while_the_trial_runs(health: UpstreamHealth, clock: FakeClock) -> None:
    """A half-open upstream still reports "half_open" while its trial request is in flight."""
    eject_upstream(health)
    clock.advance(POLICY.base_ejection_s)
    assert health.claim(A)
    assert not health.available(A)
    assert health.state()[0] == "half_open"


# Adaptive hedge delay.


def test_hedge_with_few_samples_is_twice_the_ewma(health: UpstreamHealth) -> None:
    """With fewer than 10 verify samples the hedge delay is max(floor, 2 x latency EWMA)."""
    health.record(ok(0.100), A)
    assert health.latency_ewma_ms == pytest.approx(100.0)
    assert health.adaptive_hedge_ms(50.0) == pytest.approx(200.0)
    assert health.adaptive_hedge_ms(500.0) == 500.0
    health.record(ok(0.200), A)  # EWMA 0.3 * 200 + 0.7 * 100 = 130
    assert health.adaptive_hedge_ms(50.0) == pytest.approx(260.0)


def test_hedge_with_enough_samples_is_about_the_p95(health: UpstreamHealth) -> None:
    """With 10 or more verify samples the hedge delay is about their p95, never below floor."""
    for ms in range(1, 101):
        health.record(ok(ms / 1000), A)
    assert 94.0 <= health.adaptive_hedge_ms(1.0) <= 97.0
    assert health.adaptive_hedge_ms(150.0) == 150.0


def test_hedge_switches_to_p95_at_ten_samples(health: UpstreamHealth) -> None:
    """The tenth verify sample switches the hedge delay from 2 x EWMA to the p95."""
    for _ in range(9):
        health.record(ok(0.050), A)
    assert health.adaptive_hedge_ms(1.0) == pytest.approx(100.0)
    health.record(ok(0.050), A)
    assert health.adaptive_hedge_ms(1.0) == pytest.approx(50.0)


def test_settles_do_not_feed_the_p95(health: UpstreamHealth) -> None:
    """Slow settles leave the verify p95 behind the hedge delay unchanged."""
    for _ in range(20):
        health.record(ok(0.050), A)
    before = health.adaptive_hedge_ms(1.0)
    for _ in range(20):
        health.record(ok(5.0, "settle"), A)
    assert health.adaptive_hedge_ms(1.0) == before


def test_failures_do_not_feed_latency(health: UpstreamHealth) -> None:
    """Unusable outcomes (a 1 s timeout) are not latency samples."""
    health.record(ok(0.050), A)
    health.record(read_timeout(), A)
    assert health.latency_ewma_ms == pytest.approx(50.0)


def test_settles_do_not_feed_the_hedge_with_few_samples(health: UpstreamHealth) -> None:
    """A slow settle does not stretch the verify hedge delay while verify samples are few."""
    health.record(ok(0.050), A)
    before = health.adaptive_hedge_ms(1.0)
    health.record(ok(5.0, "settle"), A)
    assert health.adaptive_hedge_ms(1.0) == before
