"""Network names: x402 v1 names and CAIP-2 ids of one chain are one chain.

v1 payloads say ``base-sepolia`` where v2 says ``eip155:84532``; identities, chain readers and
RPC settings are keyed by the CAIP-2 id so that both name the same payment and the same RPC.
"""

from __future__ import annotations

#: x402 v1 network names -> CAIP-2 (the networks with a shipped public RPC).
V1_NETWORKS: dict[str, str] = {
    "base": "eip155:8453",
    "base-sepolia": "eip155:84532",
    "avalanche": "eip155:43114",
    "avalanche-fuji": "eip155:43113",
    "polygon": "eip155:137",
    "polygon-amoy": "eip155:80002",
    "solana": "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
    "solana-devnet": "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1",
}


def caip2(network: str) -> str:
    """The CAIP-2 id of an x402 network name; CAIP-2 ids and unknown names come back unchanged."""
    return V1_NETWORKS.get(network, network)


def family(network: str) -> str:
    """The CAIP-2 namespace of a network (``eip155``, ``solana``), or ``""`` when it has none."""
    namespace, colon, _ = caip2(network).partition(":")
    return namespace if colon else ""
