"""``python -m x402_aggregator`` is the ``x402-aggregator`` command."""

from .cli import main

main()
