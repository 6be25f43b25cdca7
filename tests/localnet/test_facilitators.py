"""The test bed's two real facilitators (Python SDK, TypeScript SDK) against a real chain and USDC.

These pin what the aggregator will meet upstream: the answers, the reason codes (which differ
between the SDKs for the same fault) and where money does and does not move.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402_aggregator.localnet.chain import (
    NETWORK,
    PAY_TO,
    V1_NETWORK,
    Chain,
    dev_account,
    payer_account,
    start_chain,
)
from x402_aggregator.localnet.facilitators import (
    Facilitator,
    start_python_facilitator,
    start_ts_facilitator,
    wait_ready,
)
from x402_aggregator.localnet.payer import Payer, Payment

KINDS = ["python", "typescript"]
AMOUNT = 10_000  # 0.01 USDC
TX_HASH = re.compile(r"^0x[0-9a-f]{64}$")
LIFETIME_S = 300

# The same fault has different codes in the two SDKs (see shared/testbed.md).
REASONS: dict[str, dict[str, str]] = {
    "python": {
        "value": "invalid_exact_evm_payload_authorization_value_mismatch",
        "signer": "invalid_exact_evm_payload_signature",
        "expired": "invalid_exact_evm_payload_authorization_valid_before",
        "replay": "transaction_failed",
        "rpc_down": "invalid_exact_evm_failed_to_verify_signature",
    },
    "typescript": {
        "value": "invalid_exact_evm_payload_authorization_value_mismatch",
        "signer": "invalid_exact_evm_signature",
        "expired": "invalid_exact_evm_payload_authorization_valid_before",
        "replay": "invalid_exact_evm_nonce_already_used",
        "rpc_down": "invalid_exact_evm_signature",
    },
}
FAULTS: dict[str, dict[str, Any]] = {
    "value": {"value": AMOUNT - 1},
    "signer": {"signer": dev_account(9)},
    "expired": {"valid_for_s": 3},
}


@dataclass
class Bed:
    chain: Chain
    payer: Payer
    facilitators: dict[str, Facilitator]
    log_dir: Path

    @property
    def pay_to(self) -> str:
        return str(dev_account(PAY_TO).address)

    def balances(self) -> tuple[int, int]:
        return self.chain.balance(self.payer.address), self.chain.balance(self.pay_to)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """A chain with USDC and both facilitators, started in parallel, stopped after the module."""
    log_dir = tmp_path_factory.mktemp("testbed")
    with ExitStack() as stack:
        chain = start_chain(lifetime_s=LIFETIME_S, log_dir=log_dir)
        stack.callback(chain.stop)
        deployment = chain.deploy()
        python = start_python_facilitator(
            chain.rpc_url, lifetime_s=LIFETIME_S, log_dir=log_dir, wait=False
        )
        stack.callback(python.stop)
        typescript = start_ts_facilitator(
            chain.rpc_url, lifetime_s=LIFETIME_S, log_dir=log_dir, wait=False
        )
        stack.callback(typescript.stop)
        wait_ready(python, typescript)
        payer = Payer(payer_account(), deployment.usdc)
        yield Bed(chain, payer, {"python": python, "typescript": typescript}, log_dir)


def post(facilitator: Facilitator, path: str, body: Any) -> httpx.Response:
    with httpx.Client(base_url=facilitator.url, timeout=30) as client:
        return client.post(path, json=body)


def settled_ok(bed: Bed, facilitator: Facilitator, payment: Payment, network: str) -> str:
    """Settle ``payment`` and check the money moved exactly once; return the tx hash."""
    before_payer, before_pay_to = bed.balances()
    response = post(facilitator, "/settle", payment.body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["success"] is True, answer
    assert TX_HASH.match(answer["transaction"])
    assert answer["network"] == network
    assert answer["payer"] == payment.payer
    assert bed.balances() == (before_payer - payment.amount, before_pay_to + payment.amount)
    assert bed.chain.authorization_used(payment.payer, payment.nonce)
    return str(answer["transaction"])


@pytest.mark.parametrize("kind", KINDS)
def test_supported_lists_the_v2_network(bed: Bed, kind: str) -> None:
    """/supported lists exact on eip155:84532 for v2 and names the facilitator's own signer."""
    facilitator = bed.facilitators[kind]
    with httpx.Client(base_url=facilitator.url, timeout=10) as client:
        supported = client.get("/supported").json()
    kinds = {(k["x402Version"], k["scheme"], k["network"]) for k in supported["kinds"]}
    assert (2, "exact", NETWORK) in kinds
    assert (1, "exact", V1_NETWORK) in kinds
    assert supported["signers"]["eip155:*"] == [facilitator.address]


@pytest.mark.parametrize("kind", KINDS)
def test_v2_payment_verifies_and_settles(bed: Bed, kind: str) -> None:
    """A valid v2 payment verifies for its payer and settles on chain for exactly its amount."""
    facilitator = bed.facilitators[kind]
    payment = bed.payer.pay(bed.pay_to, AMOUNT)
    verified = post(facilitator, "/verify", payment.body)
    assert verified.status_code == 200
    assert verified.json() == {"isValid": True, "payer": payment.payer}
    settled_ok(bed, facilitator, payment, NETWORK)


@pytest.mark.parametrize("kind", KINDS)
def test_v1_payment_verifies_and_settles(bed: Bed, kind: str) -> None:
    """A valid v1 payment (network "base-sepolia") verifies and settles on the same chain."""
    facilitator = bed.facilitators[kind]
    payment = bed.payer.pay(bed.pay_to, AMOUNT, version=1)
    verified = post(facilitator, "/verify", payment.body)
    assert verified.json() == {"isValid": True, "payer": payment.payer}
    settled_ok(bed, facilitator, payment, V1_NETWORK)


@pytest.mark.parametrize("kind", KINDS)
def test_replayed_settle_fails_and_moves_no_money(bed: Bed, kind: str) -> None:
    """Settling an already settled payment again fails (200, success false) and moves no money."""
    facilitator = bed.facilitators[kind]
    payment = bed.payer.pay(bed.pay_to, AMOUNT)
    first = settled_ok(bed, facilitator, payment, NETWORK)
    before = bed.balances()

    replay = post(facilitator, "/settle", payment.body)
    assert replay.status_code == 200
    answer = replay.json()
    assert answer["success"] is False
    assert answer["errorReason"] == REASONS[kind]["replay"]
    # Python mines a reverted tx (gas paid) and names it; TypeScript fails before sending.
    assert answer["transaction"] != first
    assert bool(answer["transaction"]) is (kind == "python")
    assert bed.balances() == before

    reverify = post(facilitator, "/verify", payment.body).json()
    assert reverify["isValid"] is False
    assert reverify["invalidReason"] == "invalid_exact_evm_nonce_already_used"


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("kind", KINDS)
def test_faulty_payment_is_rejected_without_moving_money(bed: Bed, kind: str, fault: str) -> None:
    """A wrong value, foreign signature or too-short validity fails verify and settle alike."""
    facilitator = bed.facilitators[kind]
    payment = bed.payer.pay(bed.pay_to, AMOUNT, **FAULTS[fault])
    before = bed.balances()
    reason = REASONS[kind][fault]

    verified = post(facilitator, "/verify", payment.body)
    assert verified.status_code == 200
    assert verified.json()["isValid"] is False
    assert verified.json()["invalidReason"] == reason

    settled = post(facilitator, "/settle", payment.body)
    assert settled.status_code == 200
    assert settled.json()["success"] is False
    assert settled.json()["errorReason"] == reason
    assert settled.json()["transaction"] == ""
    assert bed.balances() == before
    assert not bed.chain.authorization_used(payment.payer, payment.nonce)


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_body_is_a_400_in_x402_shape(bed: Bed, kind: str) -> None:
    """A body that is not an x402 request gets 400 with invalid_payload, not a crash or 422."""
    facilitator = bed.facilitators[kind]
    with httpx.Client(base_url=facilitator.url, timeout=10) as client:
        headers = {"content-type": "application/json"}
        verify = client.post("/verify", content=b"{not json", headers=headers)
        settle = client.post("/settle", json={"x402Version": 2, "paymentPayload": 7})
    assert verify.status_code == 400
    assert verify.json()["isValid"] is False
    assert verify.json()["invalidReason"] == "invalid_payload"
    assert settle.status_code == 400
    assert settle.json() | {"errorMessage": ""} == {
        "success": False,
        "errorReason": "invalid_payload",
        "errorMessage": "",
        "transaction": "",
        "network": "",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_settle_is_pending_while_the_chain_stalls_then_succeeds_with_the_same_hash(
    bed: Bed, kind: str
) -> None:
    """Past the confirmation timeout settle answers settlement_pending with the hash; a retry
    after the block is mined answers success with that same hash, and money moves once."""
    start = start_python_facilitator if kind == "python" else start_ts_facilitator
    # A dedicated instance with a short timeout; it shares the signer key with the module's one,
    # which is safe here because both SDKs take the pending nonce from the chain.
    facilitator = start(
        bed.chain.rpc_url,
        name=f"{kind}-short-timeout",
        confirmation_timeout_s=2,
        lifetime_s=60,
        log_dir=bed.log_dir,
    )
    payment = bed.payer.pay(bed.pay_to, AMOUNT)
    before_payer, before_pay_to = bed.balances()
    try:
        bed.chain.set_automine(False)
        pending = post(facilitator, "/settle", payment.body)
        assert pending.status_code == 200
        answer = pending.json()
        assert answer["success"] is False
        assert answer["errorReason"] == "settlement_pending"
        assert TX_HASH.match(answer["transaction"])
        assert bed.balances() == (before_payer, before_pay_to)

        bed.chain.mine()
        bed.chain.set_automine(True)
        retry = post(facilitator, "/settle", payment.body).json()
        assert retry["success"] is True, retry
        assert retry["transaction"] == answer["transaction"]
        assert bed.balances() == (before_payer - AMOUNT, before_pay_to + AMOUNT)
    finally:
        bed.chain.set_automine(True)
        facilitator.stop()


def test_chain_outage_reads_as_an_invalid_payment_and_the_facilitators_survive(
    tmp_path: Path,
) -> None:
    """With its RPC gone a facilitator answers 200 isValid false (a signature-ish reason, no error
    status) and keeps serving, the TypeScript one despite its SDK's unhandled rejection."""
    with ExitStack() as stack:
        chain = start_chain(lifetime_s=60, log_dir=tmp_path)
        stack.callback(chain.stop)
        payer = Payer(payer_account(), chain.deploy().usdc)
        started = {
            "python": start_python_facilitator(
                chain.rpc_url, name="py-outage", lifetime_s=60, log_dir=tmp_path, wait=False
            ),
            "typescript": start_ts_facilitator(
                chain.rpc_url, name="ts-outage", lifetime_s=60, log_dir=tmp_path, wait=False
            ),
        }
        for facilitator in started.values():
            stack.callback(facilitator.stop)
        wait_ready(*started.values())
        payment = payer.pay(str(dev_account(PAY_TO).address), AMOUNT)
        chain.stop()

        for kind, facilitator in started.items():
            verified = post(facilitator, "/verify", payment.body)
            assert verified.status_code == 200
            assert verified.json()["isValid"] is False
            assert verified.json()["invalidReason"] == REASONS[kind]["rpc_down"]
            with httpx.Client(base_url=facilitator.url, timeout=10) as client:
                assert client.get("/supported").status_code == 200
            assert facilitator.child.alive()
