"""EVM payments through Permit2: ``exact`` for any ERC-20, and ``upto`` (a signed maximum, of
which the resource server settles what was used).

Permit2's unordered nonces belong to the owner across every token, so (network, owner, nonce)
names the payment, never the amount: an ``upto`` settled below its maximum is the same payment.
The chain proves it: Permit2's ``nonceBitmap(owner, nonce >> 8)`` has the nonce's bit set once
it moved (or was cancelled by its owner), and the transaction is the one among the token's
``Transfer(owner, to)`` logs whose call to an x402 proxy carries this owner and nonce. An unset
bit past the permit's deadline proves "expired unused".
"""

from __future__ import annotations

from .._types import JSONObject
from ..chains.base import ChainReader
from ..chains.evm import EvmReader, word
from ..networks import caip2
from .base import Evidence, PaymentFacts, extra_signer, inner, text, timestamp, unused

#: Permit2's canonical address (CREATE2: the same on every EVM chain).
PERMIT2 = "0x000000000022d473030f116ddee9f6b43ac78ba3"
#: ``nonceBitmap(address,uint256)``.
NONCE_BITMAP_SELECTOR = "0x4fe02b44"
#: ``keccak("Transfer(address,address,uint256)")``.
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
#: The x402 proxies' settle functions, by selector: where the permit's nonce and the owner sit
#: among the call's 32-byte head words (every argument before the signature is static).
SETTLE_CALLS: dict[str, tuple[int, int]] = {
    # exact: settle(permit, owner, witness(to, validAfter), signature)
    "0x13cd3b53": (2, 4),
    # exact: settleWithPermit(permit2612(value, deadline, r, s, v), permit, owner, witness, sig)
    "0xfa340378": (7, 9),
    # upto: settle(permit, amount, owner, witness(to, facilitator, validAfter), signature)
    "0xff11e7b4": (2, 5),
    # upto: settleWithPermit(permit2612, permit, amount, owner, witness, signature)
    "0x016c1748": (7, 10),
}
_UINT256 = 2**256


def _nonce(value: object) -> str | None:
    """A uint256 nonce in decimal (the SDKs send decimal; hex is the same number)."""
    if not isinstance(value, str):
        return None
    try:
        number = int(value, 16) if value.lower().startswith("0x") else int(value, 10)
    except ValueError:
        return None
    return str(number) if 0 <= number < _UINT256 else None


class Permit2Scheme:
    """Payments whose payload carries a ``permit2Authorization`` (``exact`` and ``upto``)."""

    name = "evm-permit2"
    expired_reason = "permit2_deadline_expired"
    #: The SDKs' reason for an upto payment signed for another facilitator.
    unowned_signer_reason = "upto_facilitator_mismatch"

    def read(
        self, network: str, requirements: JSONObject, payload: JSONObject
    ) -> PaymentFacts | None:
        permit = inner(payload).get("permit2Authorization")
        if not isinstance(permit, dict) or not isinstance(permit.get("from"), str):
            return None
        nonce = _nonce(permit.get("nonce"))
        identity = f"{caip2(network)}|permit2|{permit['from']}|{nonce or permit.get('nonce')}"
        permitted = permit.get("permitted")
        witness = permit.get("witness")
        token = text(permitted.get("token")) if isinstance(permitted, dict) else None
        witness = witness if isinstance(witness, dict) else {}
        return PaymentFacts(
            identity=identity.lower(),
            payer=permit["from"],
            asset=token or text(requirements.get("asset")),
            nonce=nonce,
            valid_before=timestamp(permit.get("deadline")),
            # The facilitator an upto payer signed for is the only one its proxy accepts.
            bound_signer=text(witness.get("facilitator")) or extra_signer(requirements),
            chain_keys=(text(witness.get("to")) or "",),
        )

    def provable(self, facts: PaymentFacts, reader: ChainReader) -> bool:
        return isinstance(reader, EvmReader) and None not in (facts.payer, facts.nonce)

    async def prove(self, facts: PaymentFacts, reader: ChainReader, now: float) -> Evidence:
        owner, nonce = facts.payer, facts.nonce
        if not isinstance(reader, EvmReader) or owner is None or nonce is None:
            raise ValueError(f"{self.name}: this payment cannot be read from {reader!r}")
        number = int(nonce)
        bitmap = await reader.call(
            PERMIT2, NONCE_BITMAP_SELECTOR + word(owner)[2:] + f"{number >> 8:064x}"
        )
        if len(bitmap) != 66:
            raise ValueError(f"{self.name}: nonceBitmap answered {bitmap[:80]!r}")
        if not int(bitmap, 16) >> (number & 0xFF) & 1:
            return unused(facts, now)
        return Evidence("used", await self._transaction(facts, reader, owner, number))

    async def _transaction(
        self, facts: PaymentFacts, reader: EvmReader, owner: str, nonce: int
    ) -> str | None:
        """The settle that used the nonce, among the token's transfers from the owner."""
        (recipient,) = facts.chain_keys
        if facts.asset is None or not recipient:
            return None
        owner_word = word(owner)

        def head_word(data: str, index: int) -> str:
            """The call's ``index``-th 32-byte argument word (after the 4-byte selector)."""
            return data[10 + 64 * index : 74 + 64 * index]

        async def carries_nonce(transaction: str) -> bool:
            data = await reader.transaction_input(transaction)
            places = SETTLE_CALLS.get(data[:10]) if data else None
            if data is None or places is None or len(head_word(data, max(places))) != 64:
                return False
            nonce_at, owner_at = places
            return int(head_word(data, nonce_at), 16) == nonce and (
                "0x" + head_word(data, owner_at) == owner_word
            )

        topics = [TRANSFER_TOPIC, owner_word, word(recipient)]
        return await reader.find_log(facts.asset, topics, carries_nonce)
