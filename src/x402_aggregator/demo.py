"""``x402-aggregator demo``: real payments through the aggregator on a local x402 network.

Brings up anvil with Circle's USDC and two real facilitators (Python SDK, TypeScript SDK), puts
the aggregator in front of them, pays, kills the primary facilitator, pays again (failover), and
checks the balances on chain before tearing everything down.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .aggregator import Aggregator
from .config import load_config
from .localnet.chain import USDC_DECIMALS
from .localnet.live import LiveServer
from .localnet.network import TestBed
from .server import create_app

AMOUNT = 10_000  # 0.01 USDC
PRIMARY, BACKUP = "python", "typescript"


class DemoError(RuntimeError):
    """A step of the demo did not do what it should; the message says which."""


@dataclass(frozen=True, slots=True)
class Paid:
    upstream: str
    transaction: str
    verify_ms: float
    settle_ms: float


def usdc(units: int) -> str:
    return f"{units / 10**USDC_DECIMALS:,.6f} USDC"


def run(console: Console, *, payments: int = 3, port: int = 0, keep: bool = False) -> str:
    """Run the demo and return its summary line (``demo ok: ...``); raise ``DemoError``."""
    # Failover warnings appear in line with the demo's own output.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    with console.status("starting the local x402 network (anvil, USDC, two facilitators)"):
        bed = TestBed.start(lifetime_s=24 * 3600 if keep else 600)
    try:
        _describe(console, bed)
        config = load_config(bed.aggregator_config(PRIMARY, BACKUP))
        with LiveServer(create_app(aggregator=Aggregator(config)), port=port) as server:
            console.print(f"aggregator  {server.url}  (status: {server.url}/status)\n")
            with httpx.Client(base_url=server.url, timeout=90) as client:
                summary = _pay(console, bed, client, payments)
            if keep:
                bed.restart(PRIMARY)
                console.print(f"restarted {PRIMARY}: it rejoins rotation at its next probe")
                _wait_for_interrupt(console)
    finally:
        with console.status("tearing down"):
            bed.stop()
    return summary


def _describe(console: Console, bed: TestBed) -> None:
    console.print(f"[bold]local x402 network up in {bed.startup_s:.1f} s[/bold]")
    console.print(f"chain       {bed.chain.rpc_url}  (anvil, chain id 84532)")
    console.print(f"USDC        {bed.payer.asset}  (Circle FiatTokenV2_2)")
    for facilitator in bed.facilitators.values():
        console.print(f"facilitator {facilitator.url}  {facilitator.name} SDK")


def _pay(console: Console, bed: TestBed, client: httpx.Client, count: int) -> str:
    before = bed.balances()
    console.print(f"payer {bed.payer.address}: {usdc(before['payer'])}")
    table = Table("#", "answered by", "transaction", "verify", "settle", title="payments")
    paid = [_one(console, bed, client, n) for n in range(1, count + 1)]
    console.print(f"[yellow]killing the primary facilitator ({PRIMARY})[/yellow]")
    bed.kill(PRIMARY)
    paid.append(_one(console, bed, client, count + 1))
    for number, p in enumerate(paid, 1):
        table.add_row(
            str(number),
            p.upstream,
            p.transaction[:18] + "…",
            f"{p.verify_ms:.0f} ms",
            f"{p.settle_ms:.0f} ms",
        )
    console.print(table)
    after = bed.balances()
    moved = before["payer"] - after["payer"]
    console.print(
        f"payer {usdc(after['payer'])}  (-{usdc(moved)});  "
        f"payee +{usdc(after['pay_to'] - before['pay_to'])}"
    )
    if moved != AMOUNT * len(paid) or after["pay_to"] - before["pay_to"] != moved:
        raise DemoError(f"balances moved by {moved}, expected {AMOUNT * len(paid)}")
    if paid[-1].upstream != BACKUP or any(p.upstream != PRIMARY for p in paid[:-1]):
        raise DemoError(f"unexpected routing: {[p.upstream for p in paid]}")
    return (
        f"demo ok: {len(paid)} payments settled, failover {PRIMARY} -> {BACKUP} after the "
        f"primary was killed, {usdc(moved)} moved"
    )


def _one(console: Console, bed: TestBed, client: httpx.Client, number: int) -> Paid:
    payment = bed.payer.pay(bed.pay_to, AMOUNT)
    started = time.perf_counter()
    verified = client.post("/verify", json=payment.body)
    verify_ms = (time.perf_counter() - started) * 1000
    if not verified.json().get("isValid"):
        raise DemoError(f"verify failed: {verified.text}")
    started = time.perf_counter()
    settled = client.post("/settle", json=payment.body)
    settle_ms = (time.perf_counter() - started) * 1000
    answer = settled.json()
    if not answer.get("success") or not bed.chain.authorization_used(payment.payer, payment.nonce):
        raise DemoError(f"settle failed: {settled.text}")
    upstream = settled.headers.get("X-Aggregator-Upstream", "?")
    console.print(
        f"payment {number}: {usdc(AMOUNT)} verified and settled by {upstream} "
        f"in {verify_ms:.0f} + {settle_ms:.0f} ms"
    )
    return Paid(upstream, str(answer["transaction"]), verify_ms, settle_ms)


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
