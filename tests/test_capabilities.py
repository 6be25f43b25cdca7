"""Capabilities: indexing one upstream's /supported, and merging several into the one we serve."""

from __future__ import annotations

from typing import Any

import pytest

from x402_aggregator.capabilities import Capabilities, merge_supported, parse_supported
from x402_aggregator.protocol import PaymentKind

BASE_SEPOLIA = "eip155:84532"
SOLANA_DEVNET = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
FEE_PAYER = "CKPKJWNdJEqa81x7CkZ14BVPiY6y16Sxs7owznqtWYp5"
EVM_SIGNER = "0x71C7656EC7ab88b098defB751B7401B5f6d8976F"


def kind(version: int = 2, scheme: str = "exact", network: str = BASE_SEPOLIA) -> dict[str, Any]:
    return {"x402Version": version, "scheme": scheme, "network": network}


def supported(*kinds: dict[str, Any], **rest: Any) -> Capabilities:
    return parse_supported({"kinds": list(kinds), **rest})


# parse_supported


@pytest.mark.parametrize(
    "data",
    [None, [], "kinds", {}, {"kinds": None}, {"kinds": {}}, {"kinds": "exact"}],
    ids=["null", "list", "text", "empty", "kinds-null", "kinds-object", "kinds-text"],
)
def test_a_body_without_a_kinds_list_is_not_a_supported_answer(data: object) -> None:
    """Anything but an object with a kinds list raises ValueError."""
    with pytest.raises(ValueError, match="kinds"):
        parse_supported(data)


def test_an_empty_kinds_list_supports_nothing() -> None:
    """An empty kinds list is a valid answer that supports nothing."""
    caps = supported()

    assert not caps.supports(PaymentKind(2, "exact", BASE_SEPOLIA))
    assert caps.kinds == ()
    assert caps.extensions == ()
    assert caps.signers == {}


def test_odd_kind_entries_are_skipped_and_the_others_kept() -> None:
    """A malformed kind entry is dropped without costing the upstream its other kinds."""
    good = kind()
    odd: list[Any] = [
        "exact",
        None,
        {"scheme": "exact", "network": BASE_SEPOLIA},
        {**kind(), "x402Version": "2"},
        {**kind(), "x402Version": True},
        {**kind(), "scheme": ""},
        {**kind(), "network": ""},
        {**kind(), "network": 84532},
    ]

    caps = parse_supported({"kinds": [odd[0], good, *odd[1:]]})

    assert caps.kinds == (good,)
    assert caps.supports(PaymentKind(2, "exact", BASE_SEPOLIA))
    assert caps.describe() == [f"v2 exact {BASE_SEPOLIA}"]


def test_supports_matches_version_scheme_and_network_exactly() -> None:
    """An exact kind supports only its own version, scheme and network."""
    caps = supported(kind(), kind(1, network="base-sepolia"))

    assert caps.supports(PaymentKind(2, "exact", BASE_SEPOLIA))
    assert caps.supports(PaymentKind(1, "exact", "base-sepolia"))
    assert not caps.supports(PaymentKind(1, "exact", BASE_SEPOLIA))
    assert not caps.supports(PaymentKind(2, "upto", BASE_SEPOLIA))
    assert not caps.supports(PaymentKind(2, "exact", "eip155:8453"))


def test_a_wildcard_network_matches_its_family() -> None:
    """A kind on eip155:* supports every eip155 network of that version and scheme."""
    caps = supported(kind(network="eip155:*"))

    assert caps.supports(PaymentKind(2, "exact", "eip155:8453"))
    assert caps.supports(PaymentKind(2, "exact", BASE_SEPOLIA))
    assert not caps.supports(PaymentKind(2, "exact", SOLANA_DEVNET))
    assert not caps.supports(PaymentKind(1, "exact", "eip155:8453"))
    assert not caps.supports(PaymentKind(2, "upto", "eip155:8453"))
    assert caps.supports_scheme(2, "exact")
    assert not caps.supports_scheme(2, "upto")


def test_supports_scheme_ignores_the_network() -> None:
    """supports_scheme says whether any network is served for a version and scheme."""
    caps = supported(kind(), kind(1, "exact", "base-sepolia"))

    assert caps.supports_scheme(2, "exact")
    assert caps.supports_scheme(1, "exact")
    assert not caps.supports_scheme(2, "upto")
    assert not caps.supports_scheme(3, "exact")


def test_evm_signers_are_owned_whatever_their_case() -> None:
    """0x addresses compare case-insensitively (EIP-55 case is only a checksum)."""
    caps = supported(kind(), signers={"eip155:*": [EVM_SIGNER]})

    assert caps.owns(EVM_SIGNER) is True
    assert caps.owns(EVM_SIGNER.lower()) is True
    assert caps.owns("0x" + EVM_SIGNER[2:].upper()) is True
    assert caps.owns("0x" + "00" * 20) is False


def test_base58_signers_are_owned_only_in_their_exact_case() -> None:
    """Solana base58 addresses are case-sensitive."""
    caps = supported(kind(network=SOLANA_DEVNET), signers={"solana:*": [FEE_PAYER]})

    assert caps.owns(FEE_PAYER) is True
    assert caps.owns(FEE_PAYER.lower()) is False
    assert caps.owns(FEE_PAYER.upper()) is False


def test_ownership_is_unknown_when_no_signer_is_published() -> None:
    """owns() is None, not False, for an upstream that publishes no signers at all."""
    assert supported(kind()).owns(FEE_PAYER) is None
    assert supported(kind(), signers={}).owns(EVM_SIGNER) is None
    assert supported(kind(), signers={"solana:*": []}).owns(FEE_PAYER) is None


@pytest.mark.parametrize("key", ["feePayer", "facilitatorAddress"])
def test_a_signer_named_in_a_kind_extra_is_owned(key: str) -> None:
    """A kind's extra.feePayer or extra.facilitatorAddress is one of the upstream's signers."""
    address, entry = (
        (FEE_PAYER, kind(network=SOLANA_DEVNET))
        if key == "feePayer"
        else (EVM_SIGNER, kind(scheme="upto"))
    )
    caps = supported({**entry, "extra": {key: address}})

    assert caps.owns(address) is True
    assert caps.owns("SomeoneElse1111111111111111111111111111111") is False


def test_signers_and_extensions_are_kept_as_published() -> None:
    """Signers keep their families and order; non-text signers and extensions are dropped."""
    caps = parse_supported(
        {
            "kinds": [kind()],
            "signers": {"eip155:*": [EVM_SIGNER, 7, ""], "solana:*": [FEE_PAYER], "bad": "x"},
            "extensions": ["bazaar", None, "", "payment-identifier"],
        }
    )

    assert caps.signers == {"eip155:*": (EVM_SIGNER,), "solana:*": (FEE_PAYER,)}
    assert caps.extensions == ("bazaar", "payment-identifier")


def test_equal_answers_give_equal_capabilities() -> None:
    """Two identical /supported answers index to equal Capabilities (so probes detect change)."""
    data = {"kinds": [kind(), kind(1, network="base")], "signers": {"eip155:*": [EVM_SIGNER]}}

    assert parse_supported(data) == parse_supported(data)
    assert parse_supported(data) != supported(kind())


# merge_supported


def test_kinds_are_deduplicated_and_the_first_upstreams_extra_wins() -> None:
    """Kinds merge by (version, scheme, network); the first upstream's entry and extra win."""
    first = supported(kind(), {**kind(network=SOLANA_DEVNET), "extra": {"feePayer": "First111"}})
    second = supported(
        {**kind(network=SOLANA_DEVNET), "extra": {"feePayer": "Second11"}},
        kind(1, network="base-sepolia"),
        kind(),
    )

    merged = merge_supported([first, second])

    assert merged["kinds"] == [
        kind(),
        {**kind(network=SOLANA_DEVNET), "extra": {"feePayer": "First111"}},
        kind(1, network="base-sepolia"),
    ]


def test_signers_are_merged_per_family_in_order() -> None:
    """Signers are the union per family, in upstream order, each address once."""
    first = supported(kind(), signers={"eip155:*": ["0xA", "0xB"]})
    second = supported(kind(), signers={"eip155:*": ["0xB", "0xC"], "solana:*": [FEE_PAYER]})

    merged = merge_supported([first, second])

    assert merged["signers"] == {"eip155:*": ["0xA", "0xB", "0xC"], "solana:*": [FEE_PAYER]}


def test_extensions_are_those_every_v2_upstream_offers() -> None:
    """An extension is advertised only if every upstream serving v2 offers it (first's order)."""
    first = supported(kind(), extensions=["payment-identifier", "bazaar", "eip2612GasSponsoring"])
    second = supported(kind(), extensions=["bazaar", "payment-identifier"])
    third = supported(kind(network="eip155:8453"), extensions=["payment-identifier", "bazaar"])

    assert merge_supported([first, second, third])["extensions"] == [
        "payment-identifier",
        "bazaar",
    ]
    assert merge_supported([first, supported(kind())])["extensions"] == []


def test_a_v1_only_upstream_does_not_empty_the_extensions() -> None:
    """An upstream with only v1 kinds (which have no extensions) is left out of the intersection."""
    v2 = supported(kind(), extensions=["bazaar"])
    v1_only = supported(kind(1, network="base-sepolia"))

    assert merge_supported([v1_only, v2])["extensions"] == ["bazaar"]
    assert merge_supported([v2, v1_only])["extensions"] == ["bazaar"]


def test_merging_nothing_gives_an_empty_answer() -> None:
    """With no capabilities known, the merged answer is empty but well-formed."""
    assert merge_supported([]) == {"kinds": [], "extensions": [], "signers": {}}
