"""Every fault mode of the first upstream, for verify and settle, with 1 to 3 upstreams."""

from __future__ import annotations

import pytest

from x402_aggregator._types import Operation
from x402_aggregator.localnet.fake_facilitator import FakeFacilitator, Mode
from x402_aggregator.localnet.payloads import v2_body

from .conftest import AggregatorFactory, FakeFactory, upstream_entry

# What the caller must see when the first of N upstreams misbehaves and the others are fine:
# "next" = answered by the second upstream, "first" = answered by the first,
# "unknown" = settlement_outcome_unknown from the first, "failed" = 502 from the aggregator.
VERIFY = {
    "down": "next",
    Mode.HTTP500: "next",
    Mode.HTTP429: "next",
    Mode.HANG: "next",
    Mode.RESET: "next",
    Mode.GARBAGE: "next",
    Mode.PARTIAL: "next",
    Mode.SLOW: "first",
    Mode.INVALID: "first",
    Mode.PENDING: "first",
}
SETTLE = {
    "down": "next",
    Mode.HTTP500: "unknown",
    Mode.HTTP429: "unknown",
    Mode.HANG: "unknown",
    Mode.RESET: "unknown",
    Mode.GARBAGE: "unknown",
    Mode.PARTIAL: "unknown",
    Mode.SLOW: "first",
    Mode.INVALID: "first",
    Mode.PENDING: "first",
}


def break_first(first: FakeFacilitator, fault: Mode | str, operation: Operation) -> None:
    if fault == "down":
        first.stop()
    else:
        first.set(operation, fault, delay_s=0.2)  # SLOW: well inside the 1 s budget


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("operation", ["verify", "settle"])
@pytest.mark.parametrize("fault", list(VERIFY))
def test_fault_matrix(
    fakes: FakeFactory,
    aggregator: AggregatorFactory,
    fault: Mode | str,
    operation: Operation,
    count: int,
) -> None:
    """The caller gets the right answer from the right upstream, whatever the first one does."""
    upstreams = [fakes(f"u{i}") for i in range(count)]
    agg = aggregator(
        *(
            upstream_entry(u, i, timeout_s=0.5, settle_timeout_s=0.5)
            for i, u in enumerate(upstreams)
        ),
        routing={"hedge": False},
    )
    break_first(upstreams[0], fault, operation)

    response = agg.post(f"/{operation}", v2_body())

    expected = (VERIFY if operation == "verify" else SETTLE)[fault]
    if expected == "next" and count == 1:
        expected = "failed"
    answer = response.json()
    flag = "isValid" if operation == "verify" else "success"
    if expected == "failed":
        assert response.status_code == 502
        assert answer[flag] is False
    elif expected == "unknown":
        assert response.status_code == 200
        assert answer["errorReason"] == "settlement_outcome_unknown"
        assert response.headers["X-Aggregator-Upstream"] == "u0"
    else:
        assert response.status_code == 200
        name = "u1" if expected == "next" else "u0"
        assert response.headers["X-Aggregator-Upstream"] == name
    # Never more than one upstream for a settle that may have arrived; never a third for any.
    later_calls = sum(u.calls[operation] for u in upstreams[2:])
    assert later_calls == 0
    if operation == "settle" and expected != "next":
        assert all(u.calls["settle"] == 0 for u in upstreams[1:])
