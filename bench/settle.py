"""Real payments on the local test bed: verify and settle direct to each facilitator vs through.

Starts the test bed (anvil with Circle's USDC, a Solana VM with a USDC-like SPL token, the
Python-SDK and the TypeScript-SDK facilitators), then for each facilitator an aggregator
(``x402-aggregator serve``) that has it as primary. Fresh signed payments (EIP-3009, Permit2
``exact`` in a plain ERC-20, ``upto`` bound to that facilitator and settled below its maximum,
then Solana ``exact`` naming its fee payer) are verified and settled one at a time,
alternating direct and through the aggregator, so both paths see the same chain. The aggregator
writes each settle to its default SQLite ledger (in the scratch directory); :mod:`bench.ledger`
compares ledgers.

    python -m bench.settle [--quick]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from x402_aggregator.localnet.network import TestBed
from x402_aggregator.localnet.payer import Payment
from x402_aggregator.localnet.permit2_payer import settle_for

from .services import start_aggregator
from .settings import Settings
from .stats import Summary
from .workspace import run_section

AMOUNT = 10_000
#: What the ``upto`` rows settle of their AMOUNT maximum.
UPTO_USED = 7_500
#: A payment's ``/verify`` body and its ``/settle`` body (they differ for ``upto``).
Bodies = tuple[dict[str, object], dict[str, object]]


@dataclass(frozen=True, slots=True)
class SettleRow:
    facilitator: str
    path: str  #: "direct" or "through aggregator"
    verify: Summary
    settle: Summary


@dataclass(slots=True)
class SettleResult:
    startup_s: float
    calls: int
    warmup: int
    rows: list[SettleRow]


def _timed(client: httpx.Client, path: str, body: dict[str, object], flag: str) -> float:
    started = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = (time.perf_counter() - started) * 1000
    if response.json().get(flag) is not True:
        raise RuntimeError(f"{path} at {client.base_url} failed: {response.text[:300]}")
    return elapsed


def _same(payment: Payment) -> Bodies:
    return payment.body, payment.body


def _upto(bed: TestBed, name: str) -> Bodies:
    payment = bed.permit2.pay(bed.pay_to, AMOUNT, "upto", facilitator=bed.evm_address(name))
    return payment.body, settle_for(payment, UPTO_USED)


def _payments(bed: TestBed, name: str) -> dict[str, Callable[[], Bodies]]:
    """Fresh payments each facilitator can settle, by row label."""
    solana_payer, fee_payer = bed.svm[1], bed.svm_fee_payer(name)
    return {
        name: lambda: _same(bed.payer.pay(bed.pay_to, AMOUNT)),
        f"{name} (Permit2)": lambda: _same(bed.permit2.pay(bed.pay_to, AMOUNT)),
        f"{name} (upto)": lambda: _upto(bed, name),
        f"{name} (Solana)": lambda: _same(solana_payer.pay(bed.svm_pay_to, AMOUNT, fee_payer)),
    }


def _measure(
    pay: Callable[[], Bodies], clients: dict[str, httpx.Client], settings: Settings
) -> dict[str, tuple[list[float], list[float]]]:
    """Verify + settle pairs, alternating the paths, after warm-up pairs (connections, caches)."""
    samples: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label in clients}
    for call in range(settings.settle_calls + settings.settle_warmup):
        for label, client in clients.items():
            verify_body, settle_body = pay()
            verify = _timed(client, "/verify", verify_body, "isValid")
            settle = _timed(client, "/settle", settle_body, "success")
            if call >= settings.settle_warmup:
                samples[label][0].append(verify)
                samples[label][1].append(settle)
    return samples


def run(settings: Settings, workdir: Path) -> SettleResult:
    (workdir / "testbed").mkdir(exist_ok=True)
    bed = TestBed.start(lifetime_s=300, log_dir=workdir / "testbed", svm=True)
    rows: list[SettleRow] = []
    try:
        for name in bed.facilitators:
            others = [n for n in bed.facilitators if n != name]
            config = bed.aggregator_config(name, *others)
            agg = start_aggregator(
                f"aggregator-{name}",
                workdir,
                config["upstreams"],
                extra={"health": config["health"]},
                cpu=None,
                lifetime_s=240,
            )
            try:
                with (
                    httpx.Client(base_url=bed.facilitators[name].url, timeout=60) as direct,
                    httpx.Client(base_url=agg.url, timeout=60) as through,
                ):
                    clients = {"direct": direct, "through aggregator": through}
                    for row, pay in _payments(bed, name).items():
                        for label, (verifies, settles) in _measure(pay, clients, settings).items():
                            summaries = Summary.of(verifies), Summary.of(settles)
                            rows.append(SettleRow(row, label, *summaries))
            finally:
                agg.stop()
    finally:
        bed.stop()
    return SettleResult(bed.startup_s, settings.settle_calls, settings.settle_warmup, rows)


def main() -> None:
    from .report import settle_section

    result = run_section(__doc__, run)
    print(settle_section(result))


if __name__ == "__main__":
    main()
