"""Health: how live outcomes and /supported probes move an upstream between unknown, up and down."""

from __future__ import annotations

import pytest

from x402_aggregator.health import DOWN_AFTER_FAILURES, State, UpstreamHealth
from x402_aggregator.upstream import Outcome, OutcomeKind


def outcome(kind: OutcomeKind, error: str | None = None, elapsed_s: float = 0.025) -> Outcome:
    return Outcome(kind, "primary", elapsed_s, error=error)


def state_of(health: UpstreamHealth) -> State:
    """Read the state afresh (an assert on ``health.state`` would narrow it for mypy)."""
    return health.state


def failed_times(health: UpstreamHealth, count: int, error: str = "HTTP 503") -> None:
    for _ in range(count):
        health.record(outcome("retryable", error))


def test_a_new_upstream_is_unknown() -> None:
    """Before any probe or call, an upstream's state is unknown, with nothing counted."""
    health = UpstreamHealth("primary")

    assert (health.state, health.requests, health.failures) == ("unknown", 0, 0)
    assert health.last_error is None


@pytest.mark.parametrize("kind", ["ok", "rejected"])
def test_a_definitive_answer_marks_the_upstream_up(kind: OutcomeKind) -> None:
    """An ok or rejected outcome is a working upstream: up, counted, latency kept."""
    health = UpstreamHealth("primary")

    health.record(outcome(kind, elapsed_s=0.25))

    assert state_of(health) == "up"
    assert (health.requests, health.failures, health.consecutive_failures) == (1, 0, 0)
    assert health.last_latency_ms == pytest.approx(250.0)


@pytest.mark.parametrize("kind", ["retryable", "ambiguous"])
def test_down_after_three_consecutive_failures(kind: OutcomeKind) -> None:
    """Three failed calls in a row mark an up upstream down; two do not."""
    health = UpstreamHealth("primary")
    health.record(outcome("ok"))

    for _ in range(DOWN_AFTER_FAILURES - 1):
        health.record(outcome(kind, "HTTP 503"))
    assert state_of(health) == "up"
    health.record(outcome(kind, "HTTP 503"))

    assert DOWN_AFTER_FAILURES == 3
    assert state_of(health) == "down"
    assert health.reason == "3 consecutive failed calls"
    assert (health.requests, health.failures, health.consecutive_failures) == (4, 3, 3)


def test_a_definitive_answer_between_failures_resets_the_count() -> None:
    """Failures must be consecutive: an answer in between starts the count again."""
    health = UpstreamHealth("primary")

    failed_times(health, 2)
    health.record(outcome("rejected"))
    failed_times(health, 2)

    assert state_of(health) == "up"
    assert (health.requests, health.failures, health.consecutive_failures) == (5, 4, 2)


def test_a_failure_records_the_last_error() -> None:
    """Each failure sets last_error (and its time); without a message, the outcome kind."""
    health = UpstreamHealth("primary")

    health.record(outcome("retryable", "POST /verify: cannot connect"))
    assert health.last_error == "POST /verify: cannot connect"
    assert health.last_error_at is not None
    health.record(outcome("ambiguous"))

    assert health.last_error == "ambiguous"


def test_a_definitive_answer_brings_a_down_upstream_back_up() -> None:
    """A down upstream that answers definitively is up again, its error kept for the record."""
    health = UpstreamHealth("primary")
    failed_times(health, 3, "HTTP 502")
    assert state_of(health) == "down"

    health.record(outcome("ok"))

    assert state_of(health) == "up"
    assert health.consecutive_failures == 0
    assert health.last_error == "HTTP 502"


def test_a_good_probe_marks_the_upstream_up() -> None:
    """A /supported probe that succeeds marks an unknown or down upstream up."""
    health = UpstreamHealth("primary")
    health.record_probe(None)
    assert (health.state, health.reason) == ("up", "probe succeeded")
    assert health.last_probe_at is not None

    failed_times(health, 3)
    assert state_of(health) == "down"
    health.record_probe(None)

    assert state_of(health) == "up"


def test_a_failed_probe_marks_the_upstream_down_at_once() -> None:
    """A failed probe marks the upstream down with the error, without counting a request."""
    health = UpstreamHealth("primary")
    health.record_probe(None)

    health.record_probe("GET /supported: cannot connect")

    assert state_of(health) == "down"
    assert health.reason == "probe failed: GET /supported: cannot connect"
    assert health.last_error == "GET /supported: cannot connect"
    assert health.probe_failures == 1
    assert (health.requests, health.failures) == (0, 0)


def test_probe_failures_count_until_a_probe_succeeds() -> None:
    """Consecutive probe failures are counted (for back-off) and reset by a good probe."""
    health = UpstreamHealth("primary")

    health.record_probe("HTTP 503")
    health.record_probe("HTTP 503")
    assert health.probe_failures == 2
    health.record_probe(None)

    assert health.probe_failures == 0
    assert state_of(health) == "up"


def test_a_definitive_answer_overrides_a_failed_probe() -> None:
    """An upstream down from a probe is up again as soon as a live call is answered."""
    health = UpstreamHealth("primary")
    health.record_probe("HTTP 503")

    health.record(outcome("rejected"))

    assert (health.state, health.reason) == ("up", "answering requests")
