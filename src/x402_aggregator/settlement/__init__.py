"""Settling through the ledger: claim, write ahead, send, resolve from evidence, report once.

``settler`` answers callers, ``run`` makes one pass over a plan, ``resume`` continues a payment
that may have moved, ``resolver`` does that in the background, ``evidence`` reads the chain,
``answers`` speaks from the records. The rules are in ``docs/settlement.md``.
"""

from .context import SettleContext
from .settler import LEDGER_UNAVAILABLE, Settler

__all__ = ["LEDGER_UNAVAILABLE", "SettleContext", "Settler"]
