"""Chain readers, one per network, made from RPC URLs by chain family."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from ..networks import caip2, family
from .base import ChainReader, Receipt
from .evm import PUBLIC_RPCS as EVM_PUBLIC_RPCS
from .evm import EvmReader
from .svm import PUBLIC_RPCS as SVM_PUBLIC_RPCS
from .svm import SvmReader

__all__ = ["PUBLIC_RPCS", "ChainReader", "EvmReader", "Receipt", "SvmReader", "readers"]

#: Public RPC endpoints shipped as defaults, by CAIP-2 network; overridable in config (`networks:`).
PUBLIC_RPCS: dict[str, str] = {**EVM_PUBLIC_RPCS, **SVM_PUBLIC_RPCS}

logger = logging.getLogger("x402_aggregator.chains")

#: Reader implementations by CAIP-2 namespace: a new family is one module and one entry.
FAMILIES: dict[str, Callable[[str, float], ChainReader]] = {
    "eip155": lambda url, timeout_s: EvmReader(url, timeout_s=timeout_s),
    "solana": lambda url, timeout_s: SvmReader(url, timeout_s=timeout_s),
}


def readers(urls: Mapping[str, str], *, timeout_s: float) -> dict[str, ChainReader]:
    """A reader per network (keyed by CAIP-2 id) for every URL of a family we can read."""
    made: dict[str, ChainReader] = {}
    for network, url in urls.items():
        factory = FAMILIES.get(family(network))
        if factory is None:
            logger.warning("no chain reader for %s: its RPC is not used", network)
            continue
        made[caip2(network)] = factory(url, timeout_s)
    return made
