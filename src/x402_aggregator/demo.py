"""``x402-aggregator demo``: real payments through the aggregator on a local x402 network.

Brings up anvil with Circle's USDC and two real facilitators (Python SDK, TypeScript SDK), puts
the aggregator in front of them, pays, kills the primary facilitator, pays again (failover), and
checks the balances on chain before tearing everything down. ``--payment svm`` tells the same
story with Solana ``exact`` payments on a local Solana VM, where a payment names the fee payer
that must settle it: after the kill, the merged ``/supported`` steers new payments to the live
facilitator's fee payer. ``--payment permit2`` pays ``exact`` by Permit2 in a plain ERC-20, and
``--payment upto`` signs a maximum that is settled below it, bound (like Solana's fee payer) to
the facilitator the aggregator advertises.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .aggregator import Aggregator
from .config import load_config
from .localnet.chain import NETWORK, USDC_DECIMALS
from .localnet.live import LiveServer
from .localnet.network import TestBed
from .localnet.payer import Payment
from .localnet.permit2 import TOKEN_SYMBOL
from .localnet.permit2_payer import settle_for
from .localnet.solana import SVM_NETWORK
from .server import create_app

AMOUNT = 10_000  # 0.01 USDC
#: What an ``upto`` payment's resource server settles of its AMOUNT maximum (the use metered).
UPTO_USED = 7_500
PRIMARY, BACKUP = "python", "typescript"
#: How long the aggregator may take to see the killed primary and re-advertise (probes every 2 s).
READVERTISE_S = 15.0


class DemoError(RuntimeError):
    """A step of the demo did not do what it should; the message says which."""


class DemoPayment(StrEnum):
    """The payment kind the demo pays with."""

    EIP3009 = "eip3009"
    SVM = "svm"
    PERMIT2 = "permit2"
    UPTO = "upto"


@dataclass(frozen=True, slots=True)
class Paid:
    upstream: str
    transaction: str
    verify_ms: float
    settle_ms: float
    amount: int


def usdc(units: int, unit: str = "USDC") -> str:
    return f"{units / 10**USDC_DECIMALS:,.6f} {unit}"


class Rail(Protocol):
    """One payment kind as the demo uses it: how to pay, and what the chain says."""

    #: The token's symbol, for amounts printed.
    unit: str

    def describe(self, console: Console, bed: TestBed) -> None: ...

    def pay(self, bed: TestBed, client: httpx.Client) -> Payment: ...

    def settle_body(self, payment: Payment) -> dict[str, Any]: ...

    def charged(self, payment: Payment) -> int: ...

    def moved(self, bed: TestBed, payment: Payment, answer: dict[str, Any]) -> bool: ...

    def balances(self, bed: TestBed) -> dict[str, int]: ...

    def after_kill(self, console: Console, bed: TestBed, client: httpx.Client) -> None: ...


class _Settled:
    """A payment settled for what it says (every kind but ``upto``)."""

    unit = "USDC"

    def settle_body(self, payment: Payment) -> dict[str, Any]:
        return payment.body

    def charged(self, payment: Payment) -> int:
        return payment.amount


class Eip3009Rail(_Settled):
    """USDC on anvil by EIP-3009 authorizations: any facilitator can settle any payment."""

    def describe(self, console: Console, bed: TestBed) -> None:
        console.print(f"chain       {bed.chain.rpc_url}  (anvil, chain id 84532)")
        console.print(f"USDC        {bed.payer.asset}  (Circle FiatTokenV2_2)")

    def pay(self, bed: TestBed, client: httpx.Client) -> Payment:
        return bed.payer.pay(bed.pay_to, AMOUNT)

    def moved(self, bed: TestBed, payment: Payment, answer: dict[str, Any]) -> bool:
        return bed.chain.authorization_used(payment.payer, payment.nonce)

    def balances(self, bed: TestBed) -> dict[str, int]:
        return bed.balances()

    def after_kill(self, console: Console, bed: TestBed, client: httpx.Client) -> None:
        """Nothing to wait for: the next payment fails over within its request."""


class Permit2Rail(Eip3009Rail):
    """``exact`` by Permit2 in a plain ERC-20 (no EIP-3009): any facilitator can settle it."""

    unit = TOKEN_SYMBOL

    def describe(self, console: Console, bed: TestBed) -> None:
        deployment = bed.chain.deployment
        assert deployment is not None
        console.print(f"chain       {bed.chain.rpc_url}  (anvil, chain id 84532)")
        console.print(
            f"token       {deployment.permit2.token}  (plain ERC-20, approved to Permit2)"
        )
        console.print(f"Permit2     {deployment.permit2.permit2}")

    def pay(self, bed: TestBed, client: httpx.Client) -> Payment:
        return bed.permit2.pay(bed.pay_to, AMOUNT)

    def moved(self, bed: TestBed, payment: Payment, answer: dict[str, Any]) -> bool:
        return bed.chain.permit2_nonce_used(payment.payer, payment.nonce)

    def balances(self, bed: TestBed) -> dict[str, int]:
        return bed.token_balances()


class _BoundRail:
    """Payments that name the facilitator that must settle them: the demo pays the one the
    aggregator's ``/supported`` advertises, as a resource server would."""

    scheme, network, key, what = "exact", SVM_NETWORK, "feePayer", "fee payer"

    def signer(self, bed: TestBed, name: str) -> str:
        raise NotImplementedError

    def pay_for(self, bed: TestBed, signer: str) -> Payment:
        raise NotImplementedError

    def pay(self, bed: TestBed, client: httpx.Client) -> Payment:
        return self.pay_for(bed, advertised(client, self.scheme, self.network, self.key))

    def after_kill(self, console: Console, bed: TestBed, client: httpx.Client) -> None:
        """A payment bound to the dead facilitator is refused at once; then /supported moves on."""
        stale = self.pay_for(bed, self.signer(bed, PRIMARY))
        started = time.perf_counter()
        answer = client.post("/settle", json=stale.body)
        elapsed_ms = (time.perf_counter() - started) * 1000
        reason = answer.json().get("errorReason")
        if answer.json().get("success") or not reason:
            raise DemoError(f"a payment for the dead {self.what} was not refused: {answer.text}")
        console.print(
            f"a payment naming {PRIMARY}'s {self.what} is refused in {elapsed_ms:.0f} ms: "
            f"{reason} (nobody else can sign it)"
        )
        wanted = self.signer(bed, BACKUP)
        deadline = time.monotonic() + READVERTISE_S
        while advertised(client, self.scheme, self.network, self.key) != wanted:
            if time.monotonic() > deadline:
                raise DemoError(f"/supported still advertises {PRIMARY}'s {self.what}")
            time.sleep(0.2)
        console.print(f"/supported now advertises {BACKUP}'s {self.what}")


class SvmRail(_BoundRail, _Settled):
    """A USDC-like SPL token on a local Solana VM: a payment names the fee payer that settles it."""

    def describe(self, console: Console, bed: TestBed) -> None:
        solana, _ = bed.svm
        console.print(f"solana      {solana.rpc_url}  (litesvm, {SVM_NETWORK})")
        console.print(f"token       {solana.mint}  (SPL, {USDC_DECIMALS} decimals)")
        for name in bed.facilitators:
            console.print(f"fee payer   {bed.svm_fee_payer(name)}  ({name})")

    def signer(self, bed: TestBed, name: str) -> str:
        return bed.svm_fee_payer(name)

    def pay_for(self, bed: TestBed, signer: str) -> Payment:
        _, payer = bed.svm
        return payer.pay(bed.svm_pay_to, AMOUNT, signer)

    def moved(self, bed: TestBed, payment: Payment, answer: dict[str, Any]) -> bool:
        solana, _ = bed.svm
        status = solana.status(str(answer.get("transaction")))
        return status is not None and status.get("err") is None

    def balances(self, bed: TestBed) -> dict[str, int]:
        return bed.svm_balances()


class UptoRail(_BoundRail, Permit2Rail):
    """``upto`` by Permit2: the payer signs a maximum for one facilitator; the resource server
    settles what was used (below the maximum)."""

    scheme, network, key, what = "upto", NETWORK, "facilitatorAddress", "facilitator address"

    def describe(self, console: Console, bed: TestBed) -> None:
        super().describe(console, bed)
        signed, used = usdc(AMOUNT, self.unit), usdc(UPTO_USED, self.unit)
        console.print(f"upto        each payment signed for {signed}, settled for {used}")

    def signer(self, bed: TestBed, name: str) -> str:
        return bed.evm_address(name)

    def pay_for(self, bed: TestBed, signer: str) -> Payment:
        return bed.permit2.pay(bed.pay_to, AMOUNT, "upto", facilitator=signer)

    def settle_body(self, payment: Payment) -> dict[str, Any]:
        return settle_for(payment, UPTO_USED)

    def charged(self, payment: Payment) -> int:
        return UPTO_USED


RAILS: dict[DemoPayment, Rail] = {
    DemoPayment.EIP3009: Eip3009Rail(),
    DemoPayment.SVM: SvmRail(),
    DemoPayment.PERMIT2: Permit2Rail(),
    DemoPayment.UPTO: UptoRail(),
}


def advertised(client: httpx.Client, scheme: str, network: str, key: str) -> str:
    """The ``extra[key]`` of the aggregator's v2 kind (the signer new payments must name)."""
    for kind in client.get("/supported").json().get("kinds", []):
        if (kind.get("x402Version"), kind.get("scheme"), kind.get("network")) == (
            2,
            scheme,
            network,
        ):
            return str((kind.get("extra") or {}).get(key))
    raise DemoError(f"the aggregator advertises no {scheme} kind on {network}")


def run(
    console: Console,
    *,
    payments: int = 3,
    port: int = 0,
    keep: bool = False,
    payment: DemoPayment = DemoPayment.EIP3009,
) -> str:
    """Run the demo and return its summary line (``demo ok: ...``); raise ``DemoError``."""
    # Failover warnings appear in line with the demo's own output.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    rail = RAILS[payment]
    svm = payment is DemoPayment.SVM
    what = "anvil, USDC, Solana VM, two facilitators" if svm else "anvil, USDC, two facilitators"
    with console.status(f"starting the local x402 network ({what})"):
        bed = TestBed.start(lifetime_s=24 * 3600 if keep else 600, svm=svm)
    try:
        _describe(console, bed, rail)
        config = load_config(bed.aggregator_config(PRIMARY, BACKUP))
        with LiveServer(create_app(aggregator=Aggregator(config)), port=port) as server:
            console.print(f"aggregator  {server.url}  (status: {server.url}/status)\n")
            with httpx.Client(base_url=server.url, timeout=90) as client:
                summary = _pay(console, bed, client, payments, rail)
            if keep:
                bed.restart(PRIMARY)
                console.print(f"restarted {PRIMARY}: it rejoins rotation at its next probe")
                _wait_for_interrupt(console)
    finally:
        with console.status("tearing down"):
            bed.stop()
    return summary


def _describe(console: Console, bed: TestBed, rail: Rail) -> None:
    console.print(f"[bold]local x402 network up in {bed.startup_s:.1f} s[/bold]")
    rail.describe(console, bed)
    for facilitator in bed.facilitators.values():
        console.print(f"facilitator {facilitator.url}  {facilitator.name} SDK")


def _pay(console: Console, bed: TestBed, client: httpx.Client, count: int, rail: Rail) -> str:
    before = rail.balances(bed)
    console.print(f"payer: {usdc(before['payer'], rail.unit)}")
    table = Table("#", "answered by", "transaction", "verify", "settle", title="payments")
    paid = [_one(console, bed, client, n, rail) for n in range(1, count + 1)]
    console.print(f"[yellow]killing the primary facilitator ({PRIMARY})[/yellow]")
    bed.kill(PRIMARY)
    rail.after_kill(console, bed, client)
    paid.append(_one(console, bed, client, count + 1, rail))
    for number, p in enumerate(paid, 1):
        table.add_row(
            str(number),
            p.upstream,
            p.transaction[:18] + "…",
            f"{p.verify_ms:.0f} ms",
            f"{p.settle_ms:.0f} ms",
        )
    console.print(table)
    after = rail.balances(bed)
    moved = before["payer"] - after["payer"]
    expected = sum(p.amount for p in paid)
    console.print(
        f"payer {usdc(after['payer'], rail.unit)}  (-{usdc(moved, rail.unit)});  "
        f"payee +{usdc(after['pay_to'] - before['pay_to'], rail.unit)}"
    )
    if moved != expected or after["pay_to"] - before["pay_to"] != moved:
        raise DemoError(f"balances moved by {moved}, expected {expected}")
    if paid[-1].upstream != BACKUP or any(p.upstream != PRIMARY for p in paid[:-1]):
        raise DemoError(f"unexpected routing: {[p.upstream for p in paid]}")
    below = ""
    if expected < AMOUNT * len(paid):
        below = f", each below its {usdc(AMOUNT, rail.unit)} maximum"
    return (
        f"demo ok: {len(paid)} payments settled, failover {PRIMARY} -> {BACKUP} after the "
        f"primary was killed, {usdc(moved, rail.unit)} moved{below}"
    )


def _one(console: Console, bed: TestBed, client: httpx.Client, number: int, rail: Rail) -> Paid:
    payment = rail.pay(bed, client)
    started = time.perf_counter()
    verified = client.post("/verify", json=payment.body)
    verify_ms = (time.perf_counter() - started) * 1000
    if not verified.json().get("isValid"):
        raise DemoError(f"verify failed: {verified.text}")
    started = time.perf_counter()
    settled = client.post("/settle", json=rail.settle_body(payment))
    settle_ms = (time.perf_counter() - started) * 1000
    answer = settled.json()
    if not answer.get("success") or not rail.moved(bed, payment, answer):
        raise DemoError(f"settle failed: {settled.text}")
    upstream = settled.headers.get("X-Aggregator-Upstream", "?")
    amount = rail.charged(payment)
    what = f"{usdc(amount, rail.unit)} verified and"
    if amount != payment.amount:
        what = f"{usdc(payment.amount, rail.unit)} verified, {usdc(amount, rail.unit)}"
    console.print(
        f"payment {number}: {what} settled by {upstream} in {verify_ms:.0f} + {settle_ms:.0f} ms"
    )
    return Paid(upstream, str(answer["transaction"]), verify_ms, settle_ms, amount)


def _wait_for_interrupt(console: Console) -> None:
    stop = threading.Event()
    # Handlers go in before the prompt, so a Ctrl-C right after it still ends the wait cleanly.
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        console.print("\n--keep: everything stays up; press Ctrl-C to stop.")
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
