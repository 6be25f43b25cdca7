"""Real Solana ``exact`` payment transactions for unit tests, built the way the SDK client does.

Compute-unit limit and price, an SPL ``TransferChecked`` signed by the payer, a memo; the fee
payer's signature slot is left empty for the facilitator. No RPC: the blockhash is given.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from x402_aggregator.localnet.solana import (
    SVM_NETWORK,
    TOKEN_PROGRAM,
    associated_token_account,
)

COMPUTE_BUDGET = Pubkey.from_string("ComputeBudget111111111111111111111111111111")
MEMO = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")


def key(name: str) -> Keypair:
    return Keypair.from_seed(hashlib.sha256(b"unit " + name.encode()).digest())


PAYER, FEE_PAYER, OTHER_FEE_PAYER, PAY_TO, MINT = (
    key(n) for n in ("payer", "fee payer", "other fee payer", "pay to", "mint")
)
BLOCKHASH = Hash.from_string("4QjEBrJnATvydaCoPb7j4cneA5vSJNFsAYHQwRAjAjmQ")


def transaction(
    *,
    amount: int = 10_000,
    fee_payer: Keypair = FEE_PAYER,
    memo: bytes = b"00112233445566778899aabbccddeeff",
    blockhash: Hash = BLOCKHASH,
    fee_payer_signs: bool = False,
    transfer: bool = True,
) -> VersionedTransaction:
    payer, mint = PAYER.pubkey(), MINT.pubkey()
    source = Pubkey.from_string(associated_token_account(str(payer), str(mint)))
    dest = Pubkey.from_string(associated_token_account(str(PAY_TO.pubkey()), str(mint)))
    instructions = [
        Instruction(COMPUTE_BUDGET, bytes([2]) + (20_000).to_bytes(4, "little"), []),
        Instruction(COMPUTE_BUDGET, bytes([3]) + (1).to_bytes(8, "little"), []),
    ]
    if transfer:
        data = bytes([12]) + amount.to_bytes(8, "little") + bytes([6])
        accounts = [
            AccountMeta(source, is_signer=False, is_writable=True),
            AccountMeta(mint, is_signer=False, is_writable=False),
            AccountMeta(dest, is_signer=False, is_writable=True),
            AccountMeta(payer, is_signer=True, is_writable=False),
        ]
        instructions.append(Instruction(Pubkey.from_string(TOKEN_PROGRAM), data, accounts))
    # Without a transfer, the memo carries the payer's signature (so it still signs the message).
    signers = [] if transfer else [AccountMeta(payer, is_signer=True, is_writable=False)]
    instructions.append(Instruction(MEMO, memo, signers))
    message = MessageV0.try_compile(fee_payer.pubkey(), instructions, [], blockhash)
    signed = bytes([0x80]) + bytes(message)
    fee = fee_payer.sign_message(signed) if fee_payer_signs else Signature.default()
    return VersionedTransaction.populate(message, [fee, PAYER.sign_message(signed)])


def encoded(tx: VersionedTransaction) -> str:
    return base64.b64encode(bytes(tx)).decode()


def svm_body(tx: VersionedTransaction | None = None, *, version: int = 2) -> dict[str, Any]:
    """A verify/settle request body carrying ``tx`` (default: a fresh standard payment)."""
    tx = tx or transaction()
    requirements: dict[str, Any] = {
        "scheme": "exact",
        "network": SVM_NETWORK if version == 2 else "solana-devnet",
        "asset": str(MINT.pubkey()),
        "payTo": str(PAY_TO.pubkey()),
        "maxTimeoutSeconds": 60,
        "extra": {"feePayer": str(FEE_PAYER.pubkey())},
    }
    inner = {"transaction": encoded(tx)}
    if version == 1:
        requirements.update(maxAmountRequired="10000", resource="http://x/r", description="r")
        payload: dict[str, Any] = {
            "x402Version": 1,
            "scheme": "exact",
            "network": "solana-devnet",
            "payload": inner,
        }
    else:
        requirements["amount"] = "10000"
        payload = {"x402Version": 2, "accepted": requirements, "payload": inner}
    return {"x402Version": version, "paymentPayload": payload, "paymentRequirements": requirements}
