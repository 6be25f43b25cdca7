"""Router: which upstreams may take a payment, in which order, and settle affinity."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson

from x402_aggregator._types import Operation
from x402_aggregator.capabilities import parse_supported
from x402_aggregator.config import RoutingConfig, UpstreamConfig
from x402_aggregator.health import UpstreamHealth
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.outlier import OutlierPolicy
from x402_aggregator.protocol import PaymentRequest, parse_request
from x402_aggregator.routing import (
    Attempt,
    LatencyStrategy,
    Router,
    WeightedStrategy,
)
from x402_aggregator.schemes.base import FEE_PAYER_NOT_MANAGED
from x402_aggregator.transport import HandlerTransport, UpstreamRequest, UpstreamResponse
from x402_aggregator.upstream import Upstream

from .conftest import FakeClock

BASE = "eip155:84532"
MAINNET = "eip155:8453"
SOLANA = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
FEE_PAYER = "FeePayer1111111111111111111111111111111111"
OTHER_FEE_PAYER = "OtherPayer11111111111111111111111111111111"
NONCE = "0x" + "11" * 32
POLICY = OutlierPolicy(consecutive_failures=2, base_ejection_s=30.0)


async def unreachable(request: UpstreamRequest) -> UpstreamResponse:
    raise AssertionError(f"routing must not call upstreams: {request.url}")


TRANSPORT = HandlerTransport(unreachable)


def kind(network: str = BASE, scheme: str = "exact", **extra: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"x402Version": 2, "scheme": scheme, "network": network}
    if extra:
        entry["extra"] = extra
    return entry


def make_upstream(
    name: str,
    priority: int = 0,
    weight: int = 1,
    kinds: list[dict[str, Any]] | None = None,
    clock: FakeClock | None = None,
    known: bool = True,
) -> Upstream:
    """An upstream supporting ``kinds`` (v2 exact on Base Sepolia by default)."""
    config = UpstreamConfig(
        name=name, url=f"http://{name}.invalid", priority=priority, weight=weight
    )
    health = UpstreamHealth(name, POLICY, clock=clock or FakeClock())
    upstream = Upstream(config, TRANSPORT, health)
    if known:
        upstream.capabilities = parse_supported({"kinds": kinds or [kind()]})
    return upstream


def payment(operation: Operation = "verify", nonce: str = NONCE, **body: Any) -> PaymentRequest:
    return parse_request(orjson.dumps(v2_body(nonce=nonce, **body)), operation)


def eject(upstream: Upstream) -> None:
    for _ in range(POLICY.consecutive_failures):
        upstream.health.breaker.record(False, "boom")
    assert upstream.health.breaker.state == "open"


def names(upstreams: tuple[Upstream, ...] | list[Upstream]) -> list[str]:
    return [up.name for up in upstreams]


def steps(plan: list[Attempt]) -> list[tuple[str, bool]]:
    return [(attempt.upstream.name, attempt.panic) for attempt in plan]


def plan_all(
    router: Router, request: PaymentRequest, operation: Operation = "verify"
) -> list[Attempt]:
    return router.plan(request, operation, router.candidates(request))


def strategy(name: str, **routing: Any) -> RoutingConfig:
    return RoutingConfig.model_validate({"strategy": name, **routing})


# Candidates.


def test_candidates_keep_those_that_support_the_kind() -> None:
    """Only upstreams whose /supported lists the payment's kind are candidates."""
    base = make_upstream("base")
    mainnet = make_upstream("mainnet", kinds=[kind(MAINNET)])
    wildcard = make_upstream("wildcard", priority=1, kinds=[kind("eip155:*")])
    router = Router([base, mainnet, wildcard])
    assert names(router.candidates(payment())) == ["base", "wildcard"]
    assert names(router.candidates(payment(network=MAINNET))) == ["mainnet", "wildcard"]


def test_candidates_are_in_priority_then_configuration_order() -> None:
    """Candidates come by priority, and in configuration order within a priority."""
    ups = [make_upstream("c", 2), make_upstream("a", 1), make_upstream("b", 1)]
    router = Router(ups)
    assert names(router.candidates(payment())) == ["a", "b", "c"]


def test_unknown_capability_upstreams_come_last() -> None:
    """Upstreams never probed successfully are candidates, after every known one."""
    unknown = make_upstream("unknown", priority=0, known=False)
    known = make_upstream("known", priority=5)
    router = Router([unknown, known])
    assert names(router.candidates(payment())) == ["known", "unknown"]
    assert names(router.candidates(payment(network=MAINNET))) == ["unknown"]


def test_bound_signer_goes_to_its_owner_only() -> None:
    """A Solana payment naming a fee payer goes only to the upstream that signs with it."""
    mine = make_upstream("mine", kinds=[kind(SOLANA, feePayer=FEE_PAYER)])
    theirs = make_upstream("theirs", kinds=[kind(SOLANA, feePayer=OTHER_FEE_PAYER)])
    silent = make_upstream("silent", priority=1, kinds=[kind(SOLANA)])
    router = Router([theirs, mine, silent])
    request = payment(network=SOLANA, extra={"feePayer": FEE_PAYER})
    assert request.bound_signer == FEE_PAYER
    # An upstream that publishes no signers at all cannot be ruled out.
    assert names(router.candidates(request)) == ["mine", "silent"]


def test_bound_signer_from_the_signers_map() -> None:
    """Signers listed in /supported's ``signers`` map count as owned too."""
    owner = make_upstream("owner", known=False)
    owner.capabilities = parse_supported(
        {"kinds": [kind(SOLANA)], "signers": {"solana:*": [FEE_PAYER]}}
    )
    other = make_upstream("other", kinds=[kind(SOLANA, feePayer=OTHER_FEE_PAYER)])
    router = Router([other, owner])
    request = payment(network=SOLANA, extra={"feePayer": FEE_PAYER})
    assert names(router.candidates(request)) == ["owner"]


def test_unsupported_reason_signer_not_managed() -> None:
    """When the kind is served but nobody owns the fee payer, the reason says so."""
    router = Router([make_upstream("other", kinds=[kind(SOLANA, feePayer=OTHER_FEE_PAYER)])])
    request = payment(network=SOLANA, extra={"feePayer": FEE_PAYER})
    assert router.candidates(request) == ()
    assert router.unsupported_reason(request) == FEE_PAYER_NOT_MANAGED
    assert FEE_PAYER_NOT_MANAGED == "fee_payer_not_managed_by_facilitator"


def test_an_upto_payment_goes_only_to_the_facilitator_its_witness_names() -> None:
    """The signed ``witness.facilitator`` binds it (over ``extra``); nobody else is a candidate."""
    signers = {"eip155:*": ["0x" + "aa" * 20]}
    mine = make_upstream("mine", known=False)
    mine.capabilities = parse_supported({"kinds": [kind(scheme="upto")], "signers": signers})
    theirs = make_upstream("theirs", known=False)
    theirs.capabilities = parse_supported(
        {"kinds": [kind(scheme="upto")], "signers": {"eip155:*": ["0x" + "bb" * 20]}}
    )
    data = v2_body(scheme="upto", extra={"facilitatorAddress": "0x" + "bb" * 20})
    auth = data["paymentPayload"]["payload"].pop("authorization")
    data["paymentPayload"]["payload"]["permit2Authorization"] = {
        "from": auth["from"],
        "nonce": "7",
        "witness": {"to": auth["to"], "facilitator": "0x" + "AA" * 20, "validAfter": "0"},
    }
    request = parse_request(orjson.dumps(data), "settle")

    assert names(Router([theirs, mine]).candidates(request)) == ["mine"]
    stranger = {**data["paymentPayload"]["payload"]["permit2Authorization"]}
    stranger["witness"] = {**stranger["witness"], "facilitator": "0x" + "cc" * 20}
    data["paymentPayload"]["payload"]["permit2Authorization"] = stranger
    unowned = parse_request(orjson.dumps(data), "settle")
    router = Router([theirs, mine])
    assert router.candidates(unowned) == ()
    assert router.unsupported_reason(unowned) == "upto_facilitator_mismatch"


def test_unsupported_reason_invalid_network() -> None:
    """When the scheme is served on other networks only, the reason is invalid_network."""
    router = Router([make_upstream("mainnet", kinds=[kind(MAINNET)])])
    request = payment()
    assert router.candidates(request) == ()
    assert router.unsupported_reason(request) == "invalid_network"


def test_unsupported_reason_unsupported_scheme() -> None:
    """When no upstream serves the scheme at all, the reason is unsupported_scheme."""
    router = Router([make_upstream("upto", kinds=[kind(scheme="upto")])])
    request = payment()
    assert router.candidates(request) == ()
    assert router.unsupported_reason(request) == "unsupported_scheme"


# Plans: availability, panic mode, drains.


def test_plan_puts_ejected_and_unhealthy_last_as_panic() -> None:
    """Available upstreams come first; ejected and unhealthy ones follow as panic attempts."""
    ups = [make_upstream(name, priority) for priority, name in enumerate("abcd")]
    eject(ups[0])
    for _ in range(3):
        ups[2].health.record_probe("refused")
    router = Router(ups)
    assert steps(plan_all(router, payment())) == [
        ("b", False),
        ("d", False),
        ("a", True),
        ("c", True),
    ]


def test_plan_with_every_candidate_ejected_is_all_panic() -> None:
    """When every candidate is ejected, all are still tried, as panic attempts by priority."""
    ups = [make_upstream("c", 2), make_upstream("a", 0), make_upstream("b", 1)]
    for upstream in ups:
        eject(upstream)
    router = Router(ups, strategy("weighted"))
    assert steps(plan_all(router, payment())) == [("a", True), ("b", True), ("c", True)]


def test_plan_never_includes_drained_upstreams() -> None:
    """Drained upstreams appear neither as attempts nor as panic attempts."""
    ups = [make_upstream("a", 0), make_upstream("b", 1), make_upstream("c", 2)]
    ups[0].health.drained = True
    eject(ups[1])
    ups[1].health.drained = True
    router = Router(ups)
    assert steps(plan_all(router, payment())) == [("c", False)]


def test_plan_is_empty_when_all_are_drained() -> None:
    """When every candidate is drained, the plan is empty."""
    ups = [make_upstream("a"), make_upstream("b")]
    for upstream in ups:
        upstream.health.drained = True
    router = Router(ups)
    assert router.candidates(payment()) != ()
    assert plan_all(router, payment()) == []


def test_plan_uses_the_network_breaker() -> None:
    """An upstream ejected for one network is a panic attempt there, and normal elsewhere."""
    ups = [make_upstream("a", 0, kinds=[kind(BASE), kind(MAINNET)]), make_upstream("b", 1)]
    ups[1].capabilities = ups[0].capabilities
    for _ in range(POLICY.consecutive_failures):
        ups[0].health.network(BASE).record(False, "invalid_network")
    router = Router(ups)
    assert steps(plan_all(router, payment())) == [("b", False), ("a", True)]
    assert steps(plan_all(router, payment(network=MAINNET))) == [("a", False), ("b", False)]


# Strategies.


def test_priority_strategy_keeps_priority_order() -> None:
    """The priority strategy always tries the best tier first, configuration order within it."""
    ups = [make_upstream("b", 1), make_upstream("a1", 0), make_upstream("a2", 0)]
    router = Router(ups)
    for _ in range(3):
        assert steps(plan_all(router, payment())) == [("a1", False), ("a2", False), ("b", False)]


def test_weighted_strategy_is_smooth_weighted_round_robin() -> None:
    """Weights 5/1/1 give first choices a,a,b,a,c,a,a per 7 plans, as nginx's SWRR does."""
    ups = [make_upstream("a", 0, 5), make_upstream("b", 0, 1), make_upstream("c", 0, 1)]
    router = Router(ups, strategy("weighted"))
    firsts = [plan_all(router, payment())[0].upstream.name for _ in range(14)]
    assert firsts[:7] == ["a", "a", "b", "a", "c", "a", "a"]
    assert firsts[7:] == firsts[:7]
    assert Counter(firsts[:7]) == {"a": 5, "b": 1, "c": 1}


def test_weighted_strategy_orders_the_rest_of_the_tier_by_weight() -> None:
    """After the chosen upstream, the rest of the tier follows by weight, lower tiers after."""
    weights = {"light": 1, "heavy": 5, "middle": 3, "backup": 10}
    ups = [make_upstream(name, int(name == "backup"), weight) for name, weight in weights.items()]
    router = Router(ups, strategy("weighted"))
    firsts = set()
    for _ in range(9):
        plan = names([attempt.upstream for attempt in plan_all(router, payment())])
        firsts.add(plan[0])
        assert plan[-1] == "backup"
        assert plan[1:3] == sorted(plan[1:3], key=lambda name: -weights[name])
    assert firsts == {"light", "heavy", "middle"}


def test_weighted_strategy_balances_the_best_available_tier() -> None:
    """With the best tier ejected, the weights of the next available tier are used."""
    ups = [
        make_upstream("top", 0, 1),
        make_upstream("x", 1, 2),
        make_upstream("y", 1, 1),
    ]
    eject(ups[0])
    router = Router(ups, strategy("weighted"))
    plans = [steps(plan_all(router, payment())) for _ in range(3)]
    assert [plan[0][0] for plan in plans] == ["x", "y", "x"]
    assert all(plan[-1] == ("top", True) for plan in plans)


def test_weighted_strategy_single_upstream_in_tier() -> None:
    """A tier of one needs no balancing: it goes first, lower tiers after."""
    ups = [make_upstream("only", 0, 3), make_upstream("later", 1, 9)]
    router = Router(ups, strategy("weighted"))
    for _ in range(3):
        assert steps(plan_all(router, payment())) == [("only", False), ("later", False)]


def test_weighted_strategy_keeps_unknown_capabilities_last() -> None:
    """An upstream of unknown capabilities never goes before a known one of the same tier."""
    ups = [make_upstream("known", 0), make_upstream("unknown", 0, known=False)]
    router = Router(ups, strategy("weighted"))
    for _ in range(4):
        assert plan_all(router, payment())[0].upstream.name == "known"


def test_latency_strategy_prefers_the_faster_of_two_sampled() -> None:
    """Of the two upstreams sampled (seeded RNG), the lower latency EWMA goes first."""
    latencies = {"a": 30.0, "b": 10.0, "c": 20.0, "d": 40.0}
    ups = [make_upstream(name) for name in latencies]
    for upstream in ups:
        upstream.health.latency_ewma_ms = latencies[upstream.name]
    router = Router(ups, strategy("latency"))
    router.strategy = LatencyStrategy(random.Random(402))
    twin = random.Random(402)
    firsts = []
    for _ in range(40):
        sampled = twin.sample(ups, 2)
        expected = min(sampled, key=lambda up: latencies[up.name])
        plan = [attempt.upstream for attempt in plan_all(router, payment())]
        assert plan[0] is expected
        # The rest follow fastest first.
        assert names(plan[1:]) == sorted(names(plan[1:]), key=latencies.__getitem__)
        firsts.append(plan[0].name)
    assert "d" not in firsts  # the slowest never wins a pair
    assert {"b", "c", "a"} <= set(firsts)


def test_latency_strategy_with_two_always_takes_the_faster() -> None:
    """With two upstreams in the tier, the faster one always goes first."""
    slow, fast = make_upstream("slow"), make_upstream("fast")
    slow.health.latency_ewma_ms, fast.health.latency_ewma_ms = 90.0, 15.0
    router = Router([slow, fast], strategy("latency"))
    router.strategy = LatencyStrategy(random.Random(1))
    for _ in range(10):
        assert steps(plan_all(router, payment())) == [("fast", False), ("slow", False)]


def test_latency_strategy_tries_unmeasured_upstreams_first() -> None:
    """An upstream without a latency measurement counts as 0 ms, so it gets measured."""
    measured, new = make_upstream("measured"), make_upstream("new")
    measured.health.latency_ewma_ms = 5.0
    router = Router([measured, new], strategy("latency"))
    router.strategy = LatencyStrategy(random.Random(7))
    for _ in range(5):
        assert plan_all(router, payment())[0].upstream.name == "new"


def test_latency_strategy_balances_only_the_best_tier() -> None:
    """A fast upstream of a lower tier still comes after the whole best tier."""
    ups = [make_upstream("a", 0), make_upstream("b", 0), make_upstream("quick", 1)]
    ups[0].health.latency_ewma_ms = 300.0
    ups[1].health.latency_ewma_ms = 200.0
    ups[2].health.latency_ewma_ms = 1.0
    router = Router(ups, strategy("latency"))
    router.strategy = LatencyStrategy(random.Random(3))
    for _ in range(5):
        assert steps(plan_all(router, payment())) == [("b", False), ("a", False), ("quick", False)]


# Settle affinity.


def affinity_setup(
    ttl_s: float = 300.0,
) -> tuple[Router, FakeClock, Upstream, Upstream]:
    clock = FakeClock()
    first, second = make_upstream("first", 0, clock=clock), make_upstream("second", 1, clock=clock)
    router = Router([first, second], strategy("priority", affinity_ttl_s=ttl_s), clock)
    return router, clock, first, second


def test_settle_goes_first_to_the_upstream_that_verified() -> None:
    """After ``remember``, a settle of the same payment tries that upstream first."""
    router, _, _, second = affinity_setup()
    router.remember(payment("verify"), second)
    assert steps(plan_all(router, payment("settle"), "settle")) == [
        ("second", False),
        ("first", False),
    ]


def test_affinity_is_per_payment() -> None:
    """Another payment's settle is not affected by a remembered verify."""
    router, _, _, second = affinity_setup()
    router.remember(payment("verify"), second)
    other = payment("settle", nonce="0x" + "22" * 32)
    assert steps(plan_all(router, other, "settle")) == [("first", False), ("second", False)]


def test_verify_plans_ignore_affinity() -> None:
    """Affinity reorders settles only; a verify keeps the strategy's order."""
    router, _, _, second = affinity_setup()
    router.remember(payment("verify"), second)
    assert steps(plan_all(router, payment("verify"), "verify")) == [
        ("first", False),
        ("second", False),
    ]


def test_affinity_yields_to_availability() -> None:
    """An ejected affine upstream is not moved ahead: it stays a panic attempt."""
    router, _, _, second = affinity_setup()
    router.remember(payment("verify"), second)
    eject(second)
    assert steps(plan_all(router, payment("settle"), "settle")) == [
        ("first", False),
        ("second", True),
    ]


def test_affinity_expires_after_the_ttl() -> None:
    """Affinity holds for ``affinity_ttl_s`` seconds, then the strategy's order is back."""
    router, clock, _, second = affinity_setup(ttl_s=60.0)
    router.remember(payment("verify"), second)
    clock.advance(60.0)
    assert plan_all(router, payment("settle"), "settle")[0].upstream.name == "second"
    clock.advance(0.001)
    assert plan_all(router, payment("settle"), "settle")[0].upstream.name == "first"


def test_affinity_ttl_zero_disables_it() -> None:
    """With ``affinity_ttl_s=0`` nothing is remembered."""
    router, _, _, second = affinity_setup(ttl_s=0)
    router.remember(payment("verify"), second)
    assert steps(plan_all(router, payment("settle"), "settle")) == [
        ("first", False),
        ("second", False),
    ]


def test_affinity_overrides_the_weighted_choice() -> None:
    """Affinity wins over the strategy's choice: the weighted pick is moved behind it."""
    clock = FakeClock()
    heavy, light = (
        make_upstream("heavy", 0, 9, clock=clock),
        make_upstream("light", 0, 1, clock=clock),
    )
    router = Router([heavy, light], strategy("weighted"), clock)
    assert isinstance(router.strategy, WeightedStrategy)
    router.remember(payment("verify"), light)
    for _ in range(5):
        assert steps(plan_all(router, payment("settle"), "settle")) == [
            ("light", False),
            ("heavy", False),
        ]
