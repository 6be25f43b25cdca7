"""Health and resilience over real sockets: ejection, recovery, panic, hedging, budget, admin."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.localnet.payloads import v2_body

from .conftest import AggregatorFactory, FakeFactory, Running, upstream_entry


def timed_verifies(agg: Running, count: int) -> tuple[float, list[httpx.Response]]:
    started = time.monotonic()
    responses = [agg.post("/verify", v2_body()) for _ in range(count)]
    return time.monotonic() - started, responses


def state_of(agg: Running, name: str) -> dict[str, Any]:
    upstreams = agg.client.get("/status").json()["upstreams"]
    found: dict[str, Any] = next(u for u in upstreams if u["name"] == name)
    return found


def test_a_hung_primary_costs_one_hedge_delay_not_a_timeout(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """With hedging (the default), ten verifies past a hung primary take less than one timeout."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(upstream_entry(primary, 0, timeout_s=2), upstream_entry(backup, 1))
    primary.set("verify", Mode.HANG)

    elapsed, responses = timed_verifies(agg, 10)

    assert all(r.json()["isValid"] for r in responses)
    assert {r.headers["X-Aggregator-Upstream"] for r in responses} == {"backup"}
    assert elapsed < 2.0, f"{elapsed:.2f} s for 10 verifies"


def test_without_hedging_ejection_bounds_the_cost_of_a_hung_primary(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Without hedging, only the calls before the ejection wait for the timeout."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(
        upstream_entry(primary, 0, timeout_s=0.5),
        upstream_entry(backup, 1),
        routing={"hedge": False},
        health={"outlier": {"consecutive_failures": 3}},
    )
    primary.set("verify", Mode.HANG)

    elapsed, responses = timed_verifies(agg, 10)

    assert all(r.json()["isValid"] for r in responses)
    assert primary.calls["verify"] == 3
    assert elapsed < 3 * 0.5 + 1.0, f"{elapsed:.2f} s for 10 verifies"
    network = state_of(agg, "primary")["networks"]["eip155:84532"]
    assert network["state"] == "ejected"
    assert "3 consecutive failures" in network["last_ejection_reason"]


def test_an_ejected_upstream_is_back_within_five_seconds_of_recovering(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """With health.interval_s 1, a dead primary that comes back serves again within 5 s."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(
        primary,
        backup,
        health={"interval_s": 1, "unknown_retry_s": 0.5, "outlier": {"base_ejection_s": 60}},
    )
    primary.stop()
    _, responses = timed_verifies(agg, 6)
    assert {r.headers["X-Aggregator-Upstream"] for r in responses} == {"backup"}
    assert state_of(agg, "primary")["state"] == "ejected"

    primary.start()
    recovered = time.monotonic()
    while agg.post("/verify", v2_body()).headers["X-Aggregator-Upstream"] != "primary":
        assert time.monotonic() - recovered < 5.0, state_of(agg, "primary")
        time.sleep(0.1)
    assert state_of(agg, "primary")["state"] == "healthy"


def test_panic_mode_tries_ejected_upstreams_rather_than_refusing(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """When every candidate is ejected, they are still tried in priority order."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(
        primary,
        backup,
        routing={"hedge": False},
        health={"outlier": {"consecutive_failures": 2, "base_ejection_s": 60}},
    )
    primary.set("verify", Mode.HTTP500)
    backup.set("verify", Mode.HTTP500)
    timed_verifies(agg, 3)
    assert [
        state_of(agg, name)["networks"]["eip155:84532"]["state"] for name in ("primary", "backup")
    ] == ["ejected", "ejected"]

    primary.set("verify", Mode.OK)
    response = agg.post("/verify", v2_body())

    assert response.status_code == 200
    assert response.headers["X-Aggregator-Upstream"] == "primary"


def test_a_slow_primary_is_hedged_and_the_loser_cancelled(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A verify slower than hedge_after_ms is also sent to the backup; the first answer wins."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup, routing={"hedge_after_ms": 50})
    primary.set("verify", Mode.SLOW, delay_s=0.5)

    started = time.monotonic()
    response = agg.post("/verify", v2_body())
    elapsed = time.monotonic() - started

    assert response.headers["X-Aggregator-Upstream"] == "backup"
    assert elapsed < 0.4
    assert (primary.calls["verify"], backup.calls["verify"]) == (1, 1)
    assert agg.client.get("/status").json()["totals"]["requests"]["hedges"] == 1


def test_settles_are_never_hedged(fakes: FakeFactory, aggregator: AggregatorFactory) -> None:
    """A slow settle is waited for: a second upstream would risk paying twice."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup, routing={"hedge_after_ms": 50})
    primary.set("settle", Mode.SLOW, delay_s=0.4)

    response = agg.post("/settle", v2_body())

    assert response.json()["success"] is True
    assert response.headers["X-Aggregator-Upstream"] == "primary"
    assert backup.calls["settle"] == 0


def test_an_exhausted_retry_budget_spares_a_sick_pool(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """With no budget left, ejected upstreams get one call per request, not one each."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(
        primary,
        backup,
        routing={"retry_budget_ratio": 0, "retry_budget_min": 0, "hedge": False},
        health={"outlier": {"consecutive_failures": 1, "base_ejection_s": 60}},
    )
    primary.set("verify", Mode.HTTP500)
    backup.set("verify", Mode.HTTP500)
    agg.post("/verify", v2_body())  # ejects both: failing over to a healthy backup is free
    calls = (primary.calls["verify"], backup.calls["verify"])

    response = agg.post("/verify", v2_body())  # panic mode: the second try needs budget

    assert calls == (1, 1)
    assert response.status_code == 502
    assert "retry budget" in response.json()["invalidMessage"]
    assert (primary.calls["verify"], backup.calls["verify"]) == (2, 1)


def test_the_verify_deadline_bounds_every_attempt(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Attempts share one deadline: a hung primary cannot use the whole per-call timeout."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(
        upstream_entry(primary, 0, timeout_s=10),
        upstream_entry(backup, 1),
        routing={"verify_deadline_s": 0.5, "hedge": False},
    )
    primary.set("verify", Mode.HANG)

    started = time.monotonic()
    response = agg.post("/verify", v2_body())
    elapsed = time.monotonic() - started

    assert elapsed < 1.5
    assert response.status_code == 502
    assert "deadline" in response.json()["invalidMessage"]


def test_a_flapping_upstream_never_costs_the_caller_an_error(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A primary failing every other call is covered by the backup every time."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup, routing={"hedge": False})
    answers = []
    for i in range(20):
        primary.set("verify", Mode.HTTP500 if i % 2 else Mode.OK)
        answers.append(agg.post("/verify", v2_body()))

    assert all(a.status_code == 200 and a.json()["isValid"] for a in answers)


def test_all_upstreams_down_is_a_prompt_502(
    aggregator: AggregatorFactory, fakes: FakeFactory
) -> None:
    """With every upstream dead, verify and settle fail fast with 502, listing each upstream."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.stop()
    backup.stop()

    started = time.monotonic()
    verify = agg.post("/verify", v2_body())
    settle = agg.post("/settle", v2_body())

    assert time.monotonic() - started < 1.0
    assert verify.status_code == settle.status_code == 502
    assert [u["name"] for u in settle.json()["upstreams"]] == ["primary", "backup"]


@pytest.fixture
def admin_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AGG_ADMIN_TOKEN", "admin-secret")
    return "admin-secret"


def test_drain_and_enable_need_the_token_and_steer_traffic(
    fakes: FakeFactory, aggregator: AggregatorFactory, admin_token: str
) -> None:
    """A drained upstream gets no traffic and says why in /status; enable brings it back."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup, admin={"token_env": "AGG_ADMIN_TOKEN"})
    auth = {"Authorization": f"Bearer {admin_token}"}

    refused = agg.client.post("/admin/upstreams/primary/drain")
    wrong = agg.client.post("/admin/upstreams/primary/drain", headers={"Authorization": "Bearer x"})
    unknown = agg.client.post("/admin/upstreams/nobody/drain", headers=auth)
    drained = agg.client.post("/admin/upstreams/primary/drain", headers=auth)
    while_drained = agg.post("/verify", v2_body())
    status = state_of(agg, "primary")
    enabled = agg.client.post("/admin/upstreams/primary/enable", headers=auth)
    after = agg.post("/verify", v2_body())

    assert (refused.status_code, wrong.status_code, unknown.status_code) == (401, 401, 404)
    assert drained.json() == {
        "name": "primary",
        "state": "drained",
        "reason": "drained by operator",
    }
    assert while_drained.headers["X-Aggregator-Upstream"] == "backup"
    assert (status["state"], status["reason"]) == ("drained", "drained by operator")
    assert enabled.json()["state"] == "healthy"
    assert after.headers["X-Aggregator-Upstream"] == "primary"
    assert admin_token not in agg.client.get("/status").text


def test_all_drained_is_503(
    fakes: FakeFactory, aggregator: AggregatorFactory, admin_token: str
) -> None:
    """If the operator drains every candidate, callers get 503, not a guess."""
    primary = fakes("primary")
    agg = aggregator(primary, admin={"token_env": "AGG_ADMIN_TOKEN"})
    agg.client.post(
        "/admin/upstreams/primary/drain", headers={"Authorization": f"Bearer {admin_token}"}
    )

    response = agg.post("/verify", v2_body())

    assert response.status_code == 503
    assert response.json()["invalidReason"] == "no_upstream_available"
    assert primary.calls["verify"] == 0


def test_the_admin_api_is_off_without_a_token(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Without admin.token_env, admin routes answer 404 and nothing can be drained."""
    agg = aggregator(fakes("primary"))

    response = agg.client.post("/admin/upstreams/primary/drain")

    assert response.status_code == 404
    assert agg.post("/verify", v2_body()).headers["X-Aggregator-Upstream"] == "primary"


def test_a_broken_network_is_ejected_without_losing_the_healthy_ones(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """An upstream failing only on one chain is ejected for that chain and keeps the others."""
    kinds = [
        {"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
        {"x402Version": 2, "scheme": "exact", "network": "eip155:8453"},
    ]
    primary, backup = fakes("primary", kinds=kinds), fakes("backup", kinds=kinds)
    agg = aggregator(
        upstream_entry(primary, 0, timeout_s=0.3),
        upstream_entry(backup, 1),
        routing={"hedge": False},
        health={"outlier": {"consecutive_failures": 2, "base_ejection_s": 60}},
    )
    primary.set("verify", Mode.HANG, network="eip155:8453")

    broken = [agg.post("/verify", v2_body(network="eip155:8453")) for _ in range(4)]
    healthy = [agg.post("/verify", v2_body(network="eip155:84532")) for _ in range(3)]

    assert all(r.json()["isValid"] for r in broken + healthy)
    assert [r.headers["X-Aggregator-Upstream"] for r in healthy] == ["primary"] * 3
    assert primary.calls["verify"] == 2 + 3  # two timeouts on 8453, then only 84532 traffic
    status = state_of(agg, "primary")
    assert status["state"] == "degraded"
    assert status["reason"].startswith("ejected on eip155:8453: ejected after 2 consecutive")
    assert status["networks"]["eip155:8453"]["state"] == "ejected"
    assert status["networks"]["eip155:84532"]["state"] == "closed"
