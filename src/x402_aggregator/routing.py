"""Which upstreams may handle a payment, in the order to try them."""

from __future__ import annotations

from collections.abc import Sequence

from .protocol import INVALID_NETWORK, UNSUPPORTED_SCHEME, PaymentRequest
from .upstream import Upstream

#: Reason given when a payment names a signer (Solana fee payer) no upstream owns.
SIGNER_NOT_MANAGED = "fee_payer_not_managed_by_facilitator"


class PriorityRouter:
    """Candidates by priority (lower first), then configuration order.

    An upstream whose capabilities are unknown (its ``/supported`` never answered) may still
    support the payment: it is tried after every upstream known to support it.
    """

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        indexed = sorted(enumerate(upstreams), key=lambda pair: (pair[1].config.priority, pair[0]))
        self.upstreams: tuple[Upstream, ...] = tuple(up for _, up in indexed)

    def candidates(self, request: PaymentRequest) -> tuple[Upstream, ...]:
        known: list[Upstream] = []
        unknown: list[Upstream] = []
        for upstream in self.upstreams:
            caps = upstream.capabilities
            if caps is None:
                unknown.append(upstream)
            elif caps.supports(request.kind) and (
                request.bound_signer is None or caps.owns(request.bound_signer) is not False
            ):
                known.append(upstream)
        return (*known, *unknown)

    def unsupported_reason(self, request: PaymentRequest) -> str:
        """Why no upstream can take ``request`` (all capabilities being known)."""
        kind = request.kind
        capabilities = [up.capabilities for up in self.upstreams if up.capabilities is not None]
        if any(caps.supports(kind) for caps in capabilities):
            return SIGNER_NOT_MANAGED
        if any(caps.supports_scheme(kind.version, kind.scheme) for caps in capabilities):
            return INVALID_NETWORK
        return UNSUPPORTED_SCHEME
