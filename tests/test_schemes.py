"""The payment-kind seam: each scheme reads the facts of its payments and nothing else's."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from x402_aggregator.chains import EvmReader
from x402_aggregator.localnet.payloads import PAYER, USDC_BASE_SEPOLIA, v2_body
from x402_aggregator.protocol import parse_request
from x402_aggregator.schemes import SCHEMES, PaymentFacts, read_payment
from x402_aggregator.schemes.base import EXPIRY_MARGIN_S, unused
from x402_aggregator.schemes.evm_eip3009 import Eip3009Scheme
from x402_aggregator.schemes.evm_permit2 import PERMIT2, SETTLE_CALLS, Permit2Scheme
from x402_aggregator.schemes.opaque import OpaqueScheme

from .svm import svm_body

NONCE = "0x" + "22" * 32
FEE_PAYER = "CKPKJWNdJEqa81x7CkZ14BVPiY6y16Sxs7owznqtWYp5"


def copied(body: dict[str, Any]) -> dict[str, Any]:
    """A deep copy without shared parts (``accepted`` and the requirements are one dict)."""
    result: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return result


def permit2_body(**overrides: Any) -> dict[str, Any]:
    body = copied(v2_body(**overrides))
    inner = body["paymentPayload"]["payload"]
    auth = inner.pop("authorization")
    inner["permit2Authorization"] = {
        "from": auth["from"],
        "permitted": {"token": USDC_BASE_SEPOLIA, "amount": auth["value"]},
        "spender": "0x" + "44" * 20,
        "nonce": "123456789",
        "deadline": "4102444800",
        "witness": {"to": auth["to"], "validAfter": "0", "extra": "0x"},
    }
    return body


def opaque_body() -> dict[str, Any]:
    """A kind without a module of its own (a chain family the engine does not know)."""
    body = copied(v2_body(network="aptos:1"))
    body["paymentRequirements"]["extra"] = {"feePayer": FEE_PAYER}
    body["paymentPayload"]["payload"] = {"transaction": "AQAB...base64"}
    return body


def read(body: dict[str, Any]) -> tuple[str, PaymentFacts]:
    scheme, facts = read_payment(
        body["paymentRequirements"]["network"],
        body["paymentRequirements"],
        body["paymentPayload"],
    )
    return scheme.name, facts


def test_each_payment_is_read_by_its_own_scheme() -> None:
    """EIP-3009 authorizations, Permit2 permits, Solana transactions, anything else: own module."""
    assert read(v2_body())[0] == "evm-eip3009"
    assert read(permit2_body())[0] == "evm-permit2"
    assert read(svm_body())[0] == "svm-exact"
    assert read(opaque_body())[0] == "opaque"
    assert isinstance(SCHEMES[-1], OpaqueScheme)  # the fallback that takes everything is last


def test_eip3009_facts_come_from_the_authorization() -> None:
    """Payer, nonce, deadline and token are the authorization's; the identity names them all."""
    _, facts = read(v2_body(nonce=NONCE, valid_before=1_900_000_000))

    assert facts == PaymentFacts(
        identity=f"eip155:84532|{USDC_BASE_SEPOLIA}|{PAYER}|{NONCE}".lower(),
        payer=PAYER,
        asset=USDC_BASE_SEPOLIA,
        nonce=NONCE,
        valid_before=1_900_000_000,
    )


def test_permit2_facts_come_from_the_permit() -> None:
    """A Permit2 nonce is the owner's across tokens: (network, owner, nonce); deadline bounds it."""
    _, facts = read(permit2_body())

    assert facts.identity == f"eip155:84532|permit2|{PAYER}|123456789".lower()
    assert (facts.payer, facts.nonce, facts.valid_before) == (PAYER, "123456789", 4102444800)


@pytest.mark.parametrize("make", [v2_body, permit2_body], ids=["eip3009", "permit2"])
def test_the_identity_never_includes_the_amount(make: Any) -> None:
    """An ``upto`` payment settles less than it verified: both are the same payment."""
    verified = make(nonce=NONCE, amount="10000")
    settled = copied(verified)
    settled["paymentRequirements"]["amount"] = "2500"

    assert read(settled)[1].identity == read(verified)[1].identity


def test_an_opaque_payment_is_the_hash_of_what_was_signed_and_keeps_its_bound_signer() -> None:
    """Without a module of its own a payment is its payload's hash; ``feePayer`` still binds it."""
    body = opaque_body()
    again = copied(body)
    again["paymentRequirements"]["maxTimeoutSeconds"] = 300  # the envelope, not the payment
    other = copied(body)
    other["paymentPayload"]["payload"]["transaction"] = "AQAC...base64"

    _, facts = read(body)
    assert facts.identity.startswith("sha256:")
    assert facts.bound_signer == FEE_PAYER
    assert (facts.payer, facts.nonce, facts.valid_before) == (None, None, None)
    assert read(again)[1].identity == facts.identity
    assert read(other)[1].identity != facts.identity


def test_a_deadline_beyond_64_bits_is_not_known() -> None:
    """uint256 deadlines fit no database column: they are unknown, never a crash."""
    _, facts = read(v2_body(valid_before=2**70))

    assert facts.valid_before is None


def test_unused_turns_expired_only_past_the_deadline_and_its_margin() -> None:
    """Our clock may run ahead of the chain's: expiry waits out the margin."""
    facts = PaymentFacts(identity="x", valid_before=1_000)

    assert unused(facts, 1_000 + EXPIRY_MARGIN_S).state == "unused"
    assert unused(facts, 1_001 + EXPIRY_MARGIN_S).state == "expired_unused"
    assert unused(PaymentFacts(identity="x"), 10**12).state == "unused"


def test_evm_payments_can_be_proven_from_an_evm_reader_opaque_ones_never() -> None:
    """EIP-3009 and Permit2 payments are read from the chain; an opaque one cannot be read."""
    reader = EvmReader("http://127.0.0.1:9")
    eip3009 = parse_request(orjson.dumps(v2_body()), "settle")
    permit2 = parse_request(orjson.dumps(permit2_body()), "settle")
    opaque = parse_request(orjson.dumps(opaque_body()), "settle")

    assert Eip3009Scheme().provable(eip3009.facts, reader)
    assert not Eip3009Scheme().provable(PaymentFacts(identity="x", payer=PAYER), reader)
    assert Permit2Scheme().provable(permit2.facts, reader)
    assert not Permit2Scheme().provable(PaymentFacts(identity="x", payer=PAYER), reader)
    assert not OpaqueScheme().provable(opaque.facts, reader)


async def test_proving_with_a_reader_of_another_family_is_refused() -> None:
    """A scheme asked about a chain it cannot read says so; it never guesses."""

    class OtherFamily:
        family = "solana"

        async def receipt(self, transaction: str) -> None:
            return None

        async def aclose(self) -> None:
            return None

    facts = parse_request(orjson.dumps(v2_body()), "settle").facts
    with pytest.raises(ValueError, match="cannot be read"):
        await Eip3009Scheme().prove(facts, OtherFamily(), 0.0)


def upto_body(facilitator: str = "0x" + "aa" * 20, **permit: Any) -> dict[str, Any]:
    body = permit2_body(scheme="upto", extra={"facilitatorAddress": "0x" + "bb" * 20})
    authorization = body["paymentPayload"]["payload"]["permit2Authorization"]
    authorization["witness"]["facilitator"] = facilitator
    authorization.update(permit)
    return body


def test_an_upto_payment_is_bound_to_the_facilitator_its_payer_signed_for() -> None:
    """``witness.facilitator`` is signed: it binds the payment, whatever ``extra`` says."""
    _, facts = read(upto_body())
    assert facts.bound_signer == "0x" + "aa" * 20
    _, exact = read(permit2_body(extra={"facilitatorAddress": "0x" + "cc" * 20}))
    assert exact.bound_signer == "0x" + "cc" * 20


def test_a_permit2_nonce_is_one_number_however_it_is_written() -> None:
    """Decimal (the SDKs) and hex name the same uint256: the same payment; garbage is kept raw."""
    _, decimal = read(upto_body(nonce="255"))
    _, hexadecimal = read(upto_body(nonce="0xff"))
    _, garbage = read(upto_body(nonce="nonce"))
    _, too_big = read(upto_body(nonce=str(2**256)))

    assert decimal.identity == hexadecimal.identity == f"eip155:84532|permit2|{PAYER}|255".lower()
    assert (decimal.nonce, hexadecimal.nonce) == ("255", "255")
    assert (garbage.nonce, too_big.nonce) == (None, None)
    assert garbage.identity.endswith("|nonce")
    assert not Permit2Scheme().provable(garbage, EvmReader("http://127.0.0.1:9"))


def test_permit2_facts_name_the_token_and_recipient_the_chain_is_asked_about() -> None:
    _, facts = read(upto_body())
    auth = upto_body()["paymentPayload"]["payload"]["permit2Authorization"]
    assert facts.asset == auth["permitted"]["token"]
    assert facts.chain_keys == (auth["witness"]["to"],)


def test_the_settle_selectors_are_the_x402_proxies_functions() -> None:
    """The selectors the chain reader looks for are those of the SDKs' proxy ABIs."""
    from eth_utils.abi import function_abi_to_4byte_selector
    from x402.mechanisms.evm import constants

    abis = [
        constants.X402_EXACT_PERMIT2_PROXY_ABI,
        constants.X402_EXACT_PERMIT2_PROXY_SETTLE_WITH_PERMIT_ABI,
        constants.X402_UPTO_PERMIT2_PROXY_ABI,
        constants.X402_UPTO_PERMIT2_PROXY_SETTLE_WITH_PERMIT_ABI,
    ]
    selectors = {
        "0x" + function_abi_to_4byte_selector(abi[0]).hex()  # type: ignore[arg-type]
        for abi in abis
    }
    assert selectors == set(SETTLE_CALLS)
    assert constants.PERMIT2_ADDRESS.lower() == PERMIT2
