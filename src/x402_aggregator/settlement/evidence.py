"""Chain evidence for a settle: each read of the chain recorded as an attempt, for the audit.

What can be read depends on the payment's scheme (see :mod:`x402_aggregator.schemes`); a
transaction an upstream reported is confirmed by its receipt, whatever the scheme.
"""

from __future__ import annotations

import logging

from ..chains import ChainReader, Receipt
from ..errors import ChainError
from ..ledger import AttemptEnd
from ..networks import caip2
from ..protocol import PaymentRequest
from ..schemes import Evidence
from .journal import Journal

logger = logging.getLogger("x402_aggregator.settlement")


def source(request: PaymentRequest) -> str:
    """How chain reads are named in the attempts (never the RPC's URL: it may hold a key)."""
    return f"rpc:{caip2(request.kind.network)}"


async def prove(
    journal: Journal, request: PaymentRequest, reader: ChainReader | None, now: float
) -> Evidence | None:
    """Ask the chain whether the payment moved (and by which transaction).

    None when the chain cannot say: no reader for the network, a scheme that cannot read it,
    the RPC failed, or the payment moved but its transaction was not found.
    """
    scheme, facts = request.scheme, request.facts
    if reader is None or not scheme.provable(facts, reader):
        return None
    n = await journal.begin("chain", source(request))
    try:
        evidence = await scheme.prove(facts, reader, now)
    except (ChainError, ValueError, KeyError) as exc:
        await journal.end(AttemptEnd(n, "error", error=str(exc)))
        logger.warning("chain read for settlement %s failed: %s", journal.record.id, exc)
        return None
    if evidence.state == "unknown":
        await journal.end(AttemptEnd(n, "unknown"))
        return None
    outcome = "used" if evidence.state == "used" else "unused"
    await journal.end(AttemptEnd(n, outcome, transaction=evidence.transaction))
    if evidence.state == "used" and evidence.transaction is None:
        logger.error(
            "settlement %s: the payment moved on chain but its transaction was not found",
            journal.record.id,
        )
        return None  # moved for sure, but no transaction to report: stays unresolved
    return evidence


async def confirmed(
    journal: Journal, request: PaymentRequest, reader: ChainReader | None, transaction: str
) -> Receipt | None:
    """The receipt of ``transaction`` if it is mined and succeeded; None in every other case."""
    if reader is None:
        return None
    n = await journal.begin("chain", source(request))
    try:
        receipt = await reader.receipt(transaction)
    except (ChainError, ValueError) as exc:
        await journal.end(AttemptEnd(n, "error", error=str(exc)))
        logger.warning("could not read the receipt of %s: %s", transaction, exc)
        return None
    if receipt is None:
        outcome = "receipt_none"
    else:
        outcome = "receipt_ok" if receipt.succeeded else "receipt_reverted"
    await journal.end(AttemptEnd(n, outcome, transaction=transaction))
    if receipt is None or not receipt.succeeded:
        return None
    return receipt
