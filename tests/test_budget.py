"""RetryBudget: extra attempts stay under a share of recent requests, over a sliding window."""

from __future__ import annotations

from x402_aggregator.budget import RetryBudget

from .conftest import FakeClock


def requests(budget: RetryBudget, count: int) -> None:
    for _ in range(count):
        budget.request()


def acquired(budget: RetryBudget, tries: int = 100) -> int:
    """How many extra attempts the budget grants now, out of ``tries`` asked in a row."""
    return sum(budget.try_acquire() for _ in range(tries))


def test_minimum_is_available_without_traffic(clock: FakeClock) -> None:
    """With no requests at all, ``minimum`` retries are still granted per window."""
    budget = RetryBudget(0.2, 3, 10.0, clock)
    assert acquired(budget) == 3
    assert not budget.try_acquire()


def test_minimum_applies_when_the_ratio_gives_less(clock: FakeClock) -> None:
    """When ``ratio * requests`` is below ``minimum``, the minimum is granted."""
    budget = RetryBudget(0.1, 3, 10.0, clock)
    requests(budget, 10)  # the ratio alone would allow 1
    assert acquired(budget) == 3


def test_minimum_zero_with_no_requests_grants_nothing(clock: FakeClock) -> None:
    """With ``minimum=0`` and no traffic, no retry is granted."""
    budget = RetryBudget(0.5, 0, 10.0, clock)
    assert not budget.try_acquire()


def test_beyond_the_minimum_retries_follow_the_ratio(clock: FakeClock) -> None:
    """Above the minimum, retries are granted up to ``ratio * requests`` and no further."""
    budget = RetryBudget(0.5, 2, 10.0, clock)
    requests(budget, 10)
    assert acquired(budget) == 5
    requests(budget, 2)
    assert acquired(budget) == 1
    requests(budget, 20)
    assert acquired(budget) == 10


def test_retries_spread_over_seconds_share_one_window(clock: FakeClock) -> None:
    """Requests and retries of every second in the window count together."""
    budget = RetryBudget(0.5, 0, 10.0, clock)
    requests(budget, 4)
    assert acquired(budget) == 2
    clock.advance(3)
    assert not budget.try_acquire()
    requests(budget, 4)
    assert acquired(budget) == 2


def test_old_buckets_fall_out_and_retries_return(clock: FakeClock) -> None:
    """Once the window has passed, its retries no longer count and retries are granted again."""
    budget = RetryBudget(0.5, 2, 10.0, clock)
    clock.now = 1000.0
    requests(budget, 10)
    assert acquired(budget) == 5
    clock.now = 1009.999
    assert not budget.try_acquire()
    clock.now = 1010.0
    assert acquired(budget) == 2  # only the minimum: the old requests are gone too


def test_old_requests_fall_out_of_the_window(clock: FakeClock) -> None:
    """Requests older than the window stop earning retries."""
    budget = RetryBudget(0.5, 1, 10.0, clock)
    requests(budget, 40)
    clock.advance(10)
    assert acquired(budget) == 1


def test_the_window_slides_second_by_second(clock: FakeClock) -> None:
    """Each second's requests and retries leave the window on their own, oldest first."""
    budget = RetryBudget(0.5, 0, 10.0, clock)
    clock.now = 1000.0
    requests(budget, 10)
    assert acquired(budget) == 5
    clock.now = 1005.0
    requests(budget, 4)  # 14 requests, 5 retries: 2 more
    assert acquired(budget) == 2
    clock.now = 1010.0  # second 1000 is gone: 4 requests and 2 retries remain
    assert not budget.try_acquire()
    requests(budget, 6)  # 10 requests, 2 retries: 3 more
    assert acquired(budget) == 3
    clock.now = 1015.0  # second 1005 is gone: 6 requests, 3 retries
    assert not budget.try_acquire()
    clock.now = 1020.0  # everything is gone
    requests(budget, 2)
    assert acquired(budget) == 1


def test_retries_never_exceed_the_ratio(clock: FakeClock) -> None:
    """Retries granted never exceed ``ratio * requests`` (beyond the minimum), even by a part."""
    budget = RetryBudget(0.2, 0, 10.0, clock)
    requests(budget, 4)
    assert not budget.try_acquire()
