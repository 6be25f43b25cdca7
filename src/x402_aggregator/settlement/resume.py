"""Resuming a payment an earlier attempt may have moved: evidence first, then its upstream."""

from __future__ import annotations

from dataclasses import replace

from ..ledger import Claim, Payment
from ..protocol import PaymentRequest
from ..replies import Reply
from ..routing import Attempt
from .answers import from_record
from .context import SettleContext
from .run import SettleRun


async def resume(
    context: SettleContext,
    request: PaymentRequest,
    payment: Payment,
    claim: Claim,
    *,
    report: bool,
) -> Reply:
    """Settle a claimed payment whose earlier attempts may have reached an upstream."""
    record = claim.record
    run = SettleRun(context, request, record, report=report, doubtful=True)
    previous = claim.previous or "ambiguous"
    if record.payload_hash != payment.payload_hash:
        # Same identity, different signed payload: it must not steer a payment that may have
        # moved. Leave the record as it was and say what is known.
        await context.ledger.finish(
            record, previous, note=record.note, next_check_at=record.next_check_at
        )
        return from_record(request, replace(record, state=previous))
    on_chain = previous == "pending_onchain" and record.transaction is not None
    if on_chain and record.transaction is not None:
        receipt_reply = await run.check_receipt(record.transaction)
        if receipt_reply is not None:
            return receipt_reply
    verdict = await run.prove()
    if verdict is not None and verdict.state == "used":
        return await run.chain_settled(verdict)
    if verdict is not None and verdict.state == "expired_unused":
        return await run.expired()
    if verdict is not None and not on_chain:
        # Unused on chain: no attempt moved it, and it can move once: any upstream may try
        # now, the chain decides which attempt wins. (A transaction still waiting to be mined
        # stays with the upstream that sent it.)
        return await run.execute(context.plan(request))
    sticky = context.router.upstream(record.sticky) if record.sticky else None
    if sticky is None:
        return await run.unknown(
            f"the upstream that may have it ({record.sticky}) is not configured any more"
        )
    return await run.execute([Attempt(sticky, panic=True)])
