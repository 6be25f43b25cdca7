"""Breaker: when live outcomes eject an upstream, for how long, and how it comes back."""

from __future__ import annotations

from x402_aggregator.outlier import Breaker, BreakerState, OutlierPolicy

from .conftest import FakeClock

POLICY = OutlierPolicy(
    consecutive_failures=3,
    failure_rate=0.5,
    window=10,
    min_requests=6,
    base_ejection_s=10.0,
    max_ejection_s=35.0,
)


def make(clock: FakeClock, policy: OutlierPolicy = POLICY) -> Breaker:
    return Breaker(policy, clock)


def state(breaker: Breaker) -> BreakerState:
    """The breaker's state, read through a call so that mypy does not narrow it between steps."""
    return breaker.state


def feed(breaker: Breaker, pattern: str, reason: str = "boom") -> None:
    """Record outcomes written as a string: ``S`` a success, ``F`` a failure."""
    for mark in pattern:
        breaker.record(mark == "S", "" if mark == "S" else reason)


def eject(breaker: Breaker) -> None:
    feed(breaker, "F" * breaker.policy.consecutive_failures)
    assert state(breaker) == "open"


def expire(breaker: Breaker, clock: FakeClock) -> None:
    clock.now = breaker.ejected_until
    assert breaker.allows()
    assert state(breaker) == "half_open"


def test_closed_until_consecutive_failures(clock: FakeClock) -> None:
    """The breaker stays closed below ``consecutive_failures`` failures in a row, then opens."""
    breaker = make(clock)
    feed(breaker, "FF")
    assert state(breaker) == "closed"
    assert breaker.allows()
    assert breaker.claim()
    feed(breaker, "F")
    assert state(breaker) == "open"
    assert breaker.ejections == 1
    assert not breaker.allows()
    assert not breaker.claim()


def test_success_resets_consecutive_count(clock: FakeClock) -> None:
    """A success in between resets the consecutive-failure count."""
    breaker = make(clock)
    feed(breaker, "FFSFF")
    assert state(breaker) == "closed"
    assert breaker.consecutive_failures == 2
    feed(breaker, "F")
    assert state(breaker) == "open"


def test_failure_rate_ejects_without_a_consecutive_run(clock: FakeClock) -> None:
    """More than ``failure_rate`` of the window failed, with ``min_requests`` calls, ejects."""
    breaker = make(clock)
    feed(breaker, "SFFSF")  # 3 of 5 failed, but fewer than min_requests (6) calls
    assert state(breaker) == "closed"
    feed(breaker, "F")  # 4 of 6 failed, never 3 in a row
    assert state(breaker) == "open"
    assert breaker.last_ejection_reason == "ejected: 4 of the last 6 calls failed; last: boom"


def test_failure_rate_must_be_exceeded(clock: FakeClock) -> None:
    """Exactly ``failure_rate`` of the window failing is not enough; more than it is."""
    breaker = make(clock)
    feed(breaker, "SSFFSF")  # 3 of 6: exactly 50 %
    assert state(breaker) == "closed"
    feed(breaker, "F")  # 4 of 7
    assert state(breaker) == "open"


def test_failures_older_than_the_window_do_not_count(clock: FakeClock) -> None:
    """Only the last ``window`` calls are weighed for the failure rate."""
    policy = OutlierPolicy(
        consecutive_failures=10, failure_rate=0.5, window=4, min_requests=4, base_ejection_s=10
    )
    breaker = make(clock, policy)
    feed(breaker, "FFFSSSSFF")  # 5 of 9 failed overall, but only 2 of the last 4
    assert state(breaker) == "closed"
    feed(breaker, "F")  # 3 of the last 4
    assert state(breaker) == "open"


def test_ejection_time_is_base_times_ejections_capped(clock: FakeClock) -> None:
    """Each ejection lasts ``base * ejections`` seconds, never more than ``max_ejection_s``."""
    breaker = make(clock)
    eject(breaker)
    durations = [breaker.remaining_s()]
    for _ in range(3):
        expire(breaker, clock)
        assert breaker.claim()
        breaker.record(False, "still down")
        assert state(breaker) == "open"
        durations.append(breaker.remaining_s())
    assert durations == [10.0, 20.0, 30.0, 35.0]
    assert breaker.ejections == 4


def test_half_open_after_the_ejection_time(clock: FakeClock) -> None:
    """An open breaker turns half-open once its ejection time has passed, not before."""
    breaker = make(clock)
    eject(breaker)
    clock.advance(9.999)
    assert not breaker.allows()
    assert state(breaker) == "open"
    clock.advance(0.001)
    assert breaker.allows()
    assert state(breaker) == "half_open"


def test_half_open_admits_exactly_one_trial(clock: FakeClock) -> None:
    """In half-open state one ``claim()`` succeeds until the trial is recorded or released."""
    breaker = make(clock)
    eject(breaker)
    expire(breaker, clock)
    assert breaker.claim()
    assert not breaker.claim()
    assert not breaker.allows()
    breaker.release()
    assert breaker.allows()
    assert breaker.claim()
    assert not breaker.claim()


def test_trial_success_closes(clock: FakeClock) -> None:
    """A successful trial closes the breaker and clears the failure count."""
    breaker = make(clock)
    eject(breaker)
    expire(breaker, clock)
    assert breaker.claim()
    breaker.record(True)
    assert state(breaker) == "closed"
    assert breaker.consecutive_failures == 0
    assert breaker.claim()
    assert breaker.claim()  # closed: no trial limit any more


def test_trial_failure_reejects_for_longer(clock: FakeClock) -> None:
    """A failed trial ejects again, for the next multiple of the base ejection time."""
    breaker = make(clock)
    eject(breaker)
    expire(breaker, clock)
    assert breaker.claim()
    breaker.record(False, "refused")
    assert state(breaker) == "open"
    assert breaker.ejections == 2
    assert breaker.remaining_s() == 20.0
    assert breaker.last_ejection_reason == "trial request failed: refused"
    assert not breaker.claim()


def test_probe_success_half_opens_early(clock: FakeClock) -> None:
    """``probe_succeeded()`` turns an open breaker half-open before its ejection time ends."""
    breaker = make(clock)
    eject(breaker)
    clock.advance(1)
    breaker.probe_succeeded()
    assert state(breaker) == "half_open"
    assert breaker.remaining_s() == 0.0
    assert breaker.claim()
    assert not breaker.claim()


def test_probe_success_leaves_other_states_alone(clock: FakeClock) -> None:
    """``probe_succeeded()`` neither closes a half-open breaker nor changes a closed one."""
    breaker = make(clock)
    breaker.probe_succeeded()
    assert state(breaker) == "closed"
    eject(breaker)
    expire(breaker, clock)
    breaker.probe_succeeded()
    assert state(breaker) == "half_open"


def test_long_healthy_stretch_resets_the_multiplier(clock: FakeClock) -> None:
    """Closed for longer than ``max_ejection_s``, the next ejection starts at the base again."""
    breaker = make(clock)
    eject(breaker)
    expire(breaker, clock)
    breaker.record(True)
    clock.advance(POLICY.max_ejection_s + 1)
    eject(breaker)
    assert breaker.ejections == 1
    assert breaker.remaining_s() == POLICY.base_ejection_s


def test_short_healthy_stretch_keeps_the_multiplier(clock: FakeClock) -> None:
    """Closed for less than ``max_ejection_s``, the next ejection lasts longer than the last."""
    breaker = make(clock)
    eject(breaker)
    expire(breaker, clock)
    breaker.record(True)
    clock.advance(POLICY.max_ejection_s - 1)
    eject(breaker)
    assert breaker.ejections == 2
    assert breaker.remaining_s() == 2 * POLICY.base_ejection_s


def test_remaining_s_counts_down_while_open(clock: FakeClock) -> None:
    """``remaining_s`` is the ejection time left while open, and 0 otherwise."""
    breaker = make(clock)
    assert breaker.remaining_s() == 0.0
    eject(breaker)
    assert breaker.remaining_s() == 10.0
    clock.advance(4)
    assert breaker.remaining_s() == 6.0
    clock.advance(100)
    assert breaker.remaining_s() == 0.0
    assert breaker.allows()
    assert breaker.remaining_s() == 0.0


def test_last_ejection_reason_names_consecutive_failures(clock: FakeClock) -> None:
    """An ejection for a failure run says so, with the last failure's reason."""
    breaker = make(clock)
    assert breaker.last_ejection_reason is None
    feed(breaker, "FFF", reason="HTTP 502")
    assert breaker.last_ejection_reason == "ejected after 3 consecutive failures; last: HTTP 502"
    assert breaker.last_ejected_at is not None


def test_last_ejection_reason_without_a_reason(clock: FakeClock) -> None:
    """An ejection recorded without a reason names only the rule that tripped."""
    breaker = make(clock)
    for _ in range(3):
        breaker.record(False)
    assert breaker.last_ejection_reason == "ejected after 3 consecutive failures"


def test_failures_while_open_do_not_count_after_closing(clock: FakeClock) -> None:
    """After a successful trial closes the breaker, a single failure does not re-eject it."""
    breaker = make(clock)
    eject(breaker)
    feed(breaker, "FFFFF")  # panic-mode attempts sent while it was ejected
    expire(breaker, clock)
    assert breaker.claim()
    breaker.record(True)
    assert state(breaker) == "closed"
    feed(breaker, "F")
    assert state(breaker) == "closed"
