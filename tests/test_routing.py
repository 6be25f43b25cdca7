"""Routing: which upstreams may take a payment, in which order, and why none can."""

from __future__ import annotations

from typing import Any

import orjson

from x402_aggregator.capabilities import parse_supported
from x402_aggregator.config import UpstreamConfig
from x402_aggregator.protocol import (
    INVALID_NETWORK,
    UNSUPPORTED_SCHEME,
    PaymentRequest,
    parse_request,
)
from x402_aggregator.routing import SIGNER_NOT_MANAGED, PriorityRouter
from x402_aggregator.testing.payloads import v1_body, v2_body
from x402_aggregator.transport import HandlerTransport, UpstreamRequest, UpstreamResponse
from x402_aggregator.upstream import Upstream

BASE_SEPOLIA = "eip155:84532"
SOLANA_DEVNET = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
FEE_PAYER = "CKPKJWNdJEqa81x7CkZ14BVPiY6y16Sxs7owznqtWYp5"
OTHER_FEE_PAYER = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
UNKNOWN = object()


async def never_called(request: UpstreamRequest) -> UpstreamResponse:
    raise AssertionError(f"routing must not call upstreams: {request.url}")


def kind(network: str = BASE_SEPOLIA, version: int = 2, **extra: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"x402Version": version, "scheme": "exact", "network": network}
    if extra:
        entry["extra"] = extra
    return entry


def make(name: str, priority: int = 0, supported: object = UNKNOWN) -> Upstream:
    """An upstream whose capabilities are set from a /supported body, or left unknown."""
    config = UpstreamConfig.model_validate(
        {"name": name, "url": f"http://{name}.test", "priority": priority}
    )
    upstream = Upstream(config, HandlerTransport(never_called))
    if supported is not UNKNOWN:
        upstream.capabilities = parse_supported(supported)
    return upstream


def names(upstreams: tuple[Upstream, ...]) -> list[str]:
    return [u.name for u in upstreams]


def evm(network: str = BASE_SEPOLIA) -> PaymentRequest:
    return parse_request(orjson.dumps(v2_body(network=network)), "verify")


def solana(fee_payer: str = FEE_PAYER) -> PaymentRequest:
    body = v2_body(network=SOLANA_DEVNET, extra={"feePayer": fee_payer})
    return parse_request(orjson.dumps(body), "settle")


EVM_ONLY = {"kinds": [kind()]}


def test_upstreams_are_ordered_by_priority_then_configuration_order() -> None:
    """Lower priority first; equal priorities keep their configuration order."""
    router = PriorityRouter(
        [make("c", 2, EVM_ONLY), make("a", 1, EVM_ONLY), make("b", 1, EVM_ONLY), make("z", 0)]
    )

    assert names(router.upstreams) == ["z", "a", "b", "c"]


def test_candidates_follow_the_router_order() -> None:
    """Every upstream supporting the kind is a candidate, in priority order."""
    router = PriorityRouter([make("backup", 1, EVM_ONLY), make("primary", 0, EVM_ONLY)])

    assert names(router.candidates(evm())) == ["primary", "backup"]


def test_upstreams_of_unknown_capability_come_after_known_supporting_ones() -> None:
    """An upstream never probed is tried, but after every upstream known to support the kind."""
    router = PriorityRouter(
        [make("unknown-first", 0), make("known", 5, EVM_ONLY), make("unknown-last", 9)]
    )

    assert names(router.candidates(evm())) == ["known", "unknown-first", "unknown-last"]


def test_upstreams_not_supporting_the_kind_are_excluded() -> None:
    """A known upstream without the payment's kind is never a candidate."""
    v1_only = {"kinds": [kind("base-sepolia", version=1)]}
    other_chain = {"kinds": [kind("eip155:8453")]}
    router = PriorityRouter(
        [make("v1", 0, v1_only), make("mainnet", 1, other_chain), make("ok", 2, EVM_ONLY)]
    )

    assert names(router.candidates(evm())) == ["ok"]
    v1_request = parse_request(orjson.dumps(v1_body()), "verify")
    assert names(router.candidates(v1_request)) == ["v1"]


def test_a_wildcard_kind_makes_an_upstream_a_candidate() -> None:
    """An upstream listing eip155:* takes any eip155 network of that version and scheme."""
    router = PriorityRouter([make("any-evm", 0, {"kinds": [kind("eip155:*")]})])

    assert names(router.candidates(evm("eip155:8453"))) == ["any-evm"]


def test_a_bound_payment_goes_only_to_the_owner_of_its_signer() -> None:
    """A payment naming a fee payer goes only to upstreams whose signers include it."""
    theirs = {"kinds": [kind(SOLANA_DEVNET)], "signers": {"solana:*": [OTHER_FEE_PAYER]}}
    ours = {"kinds": [kind(SOLANA_DEVNET, feePayer=FEE_PAYER)]}
    router = PriorityRouter([make("theirs", 0, theirs), make("ours", 1, ours)])

    assert names(router.candidates(solana(FEE_PAYER))) == ["ours"]
    assert names(router.candidates(solana(OTHER_FEE_PAYER))) == ["theirs"]


def test_an_upstream_publishing_no_signers_may_take_a_bound_payment() -> None:
    """Without published signers ownership is unknown, so the upstream stays a candidate."""
    silent = {"kinds": [kind(SOLANA_DEVNET)]}
    router = PriorityRouter([make("silent", 0, silent), make("unknown", 1)])

    assert names(router.candidates(solana())) == ["silent", "unknown"]


def test_an_unbound_payment_ignores_signers() -> None:
    """A payment that names no signer is routed on its kind alone."""
    with_signers = {"kinds": [kind()], "signers": {"eip155:*": ["0x" + "11" * 20]}}
    router = PriorityRouter([make("a", 0, with_signers)])

    assert names(router.candidates(evm())) == ["a"]


def test_a_kind_served_only_for_other_signers_is_fee_payer_not_managed() -> None:
    """When the kind is served but nobody owns the named fee payer, say so."""
    theirs = {"kinds": [kind(SOLANA_DEVNET, feePayer=OTHER_FEE_PAYER)]}
    router = PriorityRouter([make("theirs", 0, theirs)])

    request = solana(FEE_PAYER)

    assert router.candidates(request) == ()
    assert router.unsupported_reason(request) == SIGNER_NOT_MANAGED
    assert SIGNER_NOT_MANAGED == "fee_payer_not_managed_by_facilitator"


def test_a_known_scheme_on_an_unserved_network_is_invalid_network() -> None:
    """When some upstream serves the scheme but not the network, the reason is invalid_network."""
    router = PriorityRouter([make("a", 0, EVM_ONLY), make("b", 1, {"kinds": []})])

    request = evm("eip155:1")

    assert router.candidates(request) == ()
    assert router.unsupported_reason(request) == INVALID_NETWORK


def test_an_unserved_scheme_is_unsupported_scheme() -> None:
    """When no upstream serves the version and scheme at all, the reason is unsupported_scheme."""
    router = PriorityRouter([make("a", 0, EVM_ONLY)])
    upto = parse_request(orjson.dumps(v2_body(scheme="upto")), "verify")
    v1 = parse_request(orjson.dumps(v1_body()), "verify")

    assert router.candidates(upto) == router.candidates(v1) == ()
    assert router.unsupported_reason(upto) == UNSUPPORTED_SCHEME
    assert router.unsupported_reason(v1) == UNSUPPORTED_SCHEME
