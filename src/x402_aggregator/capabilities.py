"""What each upstream says it supports (``GET /supported``), and the merged view we advertise."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._types import JSONObject
from .protocol import PaymentKind

# Kind ``extra`` fields that name an address the upstream signs with.
_SIGNER_EXTRA_KEYS = ("feePayer", "facilitatorAddress")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """One upstream's ``/supported`` answer, indexed for routing."""

    kinds: tuple[JSONObject, ...] = field(repr=False)
    signers: dict[str, tuple[str, ...]] = field(repr=False)
    extensions: tuple[str, ...]
    _exact: frozenset[PaymentKind] = field(repr=False)
    #: (version, scheme, network prefix) for wildcard networks such as ``eip155:*``.
    _patterns: tuple[tuple[int, str, str], ...] = field(repr=False)
    _addresses: frozenset[str] = field(repr=False)

    def supports(self, kind: PaymentKind) -> bool:
        if kind in self._exact:
            return True
        return any(
            v == kind.version and s == kind.scheme and kind.network.startswith(prefix)
            for v, s, prefix in self._patterns
        )

    def supports_scheme(self, version: int, scheme: str) -> bool:
        return any(k.version == version and k.scheme == scheme for k in self._exact) or any(
            v == version and s == scheme for v, s, _ in self._patterns
        )

    def owns(self, address: str) -> bool | None:
        """Whether ``address`` is one of this upstream's signers; None when it publishes none."""
        if not self._addresses:
            return None
        return _address_key(address) in self._addresses

    def describe(self) -> list[str]:
        """Short human labels, e.g. ``v2 exact eip155:84532``."""
        return [f"v{k.version} {k.scheme} {k.network}" for k in sorted(self._exact, key=_sort_key)]


def parse_supported(data: Any) -> Capabilities:
    """Index a ``/supported`` body; raise ``ValueError`` if it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("kinds"), list):
        raise ValueError("not a /supported answer: no 'kinds' list")
    kinds: list[JSONObject] = []
    exact: set[PaymentKind] = set()
    patterns: list[tuple[int, str, str]] = []
    addresses: set[str] = set()
    for raw in data["kinds"]:
        kind = _kind(raw)
        if kind is None:
            continue  # one odd entry should not cost the upstream all its other kinds
        kinds.append(raw)
        if kind.network.endswith("*"):
            patterns.append((kind.version, kind.scheme, kind.network[:-1]))
        else:
            exact.add(kind)
        extra = raw.get("extra")
        if isinstance(extra, dict):
            addresses.update(
                _address_key(extra[k]) for k in _SIGNER_EXTRA_KEYS if _is_text(extra.get(k))
            )
    signers = _signers(data.get("signers"))
    addresses.update(_address_key(a) for values in signers.values() for a in values)
    extensions = data.get("extensions")
    return Capabilities(
        kinds=tuple(kinds),
        signers=signers,
        extensions=tuple(e for e in extensions if _is_text(e))
        if isinstance(extensions, list)
        else (),
        _exact=frozenset(exact),
        _patterns=tuple(patterns),
        _addresses=frozenset(addresses),
    )


def merge_supported(capabilities: Iterable[Capabilities]) -> JSONObject:
    """Union of kinds (first upstream wins a kind's ``extra``), signers merged per family.

    ``capabilities`` must come in routing preference order. An extension is advertised only when
    every upstream serving v2 traffic offers it: a resource server that relies on one (say gas
    sponsoring) may have its payment routed to any of them.
    """
    kinds: dict[tuple[Any, Any, Any], JSONObject] = {}
    signers: dict[str, list[str]] = {}
    extensions: list[str] | None = None
    for caps in capabilities:
        for raw in caps.kinds:
            kinds.setdefault((raw["x402Version"], raw["scheme"], raw["network"]), raw)
        for family, addresses in caps.signers.items():
            merged = signers.setdefault(family, [])
            known = {_address_key(a) for a in merged}
            merged.extend(a for a in addresses if _address_key(a) not in known)
        if any(raw["x402Version"] >= 2 for raw in caps.kinds):
            own = list(caps.extensions)
            extensions = own if extensions is None else [e for e in extensions if e in own]
    return {"kinds": list(kinds.values()), "extensions": extensions or [], "signers": signers}


def _kind(raw: Any) -> PaymentKind | None:
    if not isinstance(raw, dict):
        return None
    version, scheme, network = raw.get("x402Version"), raw.get("scheme"), raw.get("network")
    if type(version) is not int or not isinstance(scheme, str) or not isinstance(network, str):
        return None
    if not scheme or not network:
        return None
    return PaymentKind(version, scheme, network)


def _signers(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        return {}
    return {
        family: tuple(a for a in addresses if _is_text(a))
        for family, addresses in raw.items()
        if isinstance(family, str) and isinstance(addresses, list)
    }


def _address_key(address: str) -> str:
    # EVM addresses are case-insensitive hex (EIP-55 only adds a checksum); base58 is not.
    return address.lower() if address.startswith("0x") else address


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _sort_key(kind: PaymentKind) -> tuple[int, str, str]:
    return (-kind.version, kind.scheme, kind.network)
