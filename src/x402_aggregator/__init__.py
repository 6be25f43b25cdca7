"""x402-aggregator: one x402 facilitator endpoint in front of many."""

__version__ = "0.1.0"
