"""The whole local x402 network in one object: chain, USDC, both facilitators, a payer.

bed = TestBed.start()
try:
    payment = bed.payer.pay(bed.pay_to, 10_000)
    ...  # POST payment.body to an aggregator configured with bed.aggregator_config()
finally:
    bed.stop()
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from .chain import PAY_TO, Chain, dev_account, payer_account, start_chain
from .facilitators import (
    Facilitator,
    Kind,
    start_python_facilitator,
    start_ts_facilitator,
    wait_ready,
)
from .payer import Payer

KINDS: tuple[Kind, ...] = ("python", "typescript")
#: A dev account that is neither the payer nor a facilitator: signs "foreign" payments.
STRANGER = 9


@dataclass
class TestBed:
    """A running local x402 network; ``stop`` ends every process it started."""

    chain: Chain
    facilitators: dict[str, Facilitator]
    payer: Payer
    pay_to: str
    log_dir: Path
    lifetime_s: float
    confirmation_timeout_s: float
    #: Seconds the stack took to come up.
    startup_s: float = 0.0

    __test__ = False  # not a pytest test class, despite the name

    @classmethod
    def start(
        cls,
        *,
        lifetime_s: float = 900,
        confirmation_timeout_s: float = 5,
        log_dir: Path | None = None,
    ) -> TestBed:
        """Bring the network up: anvil, deployments, then both facilitators in parallel.

        ``confirmation_timeout_s`` is how long a facilitator waits for a receipt before it answers
        ``settlement_pending``; anvil mines at once, so only a stalled chain ever reaches it.
        """
        started = time.monotonic()
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="x402-testbed-"))
        bed = cls(
            chain=start_chain(lifetime_s=lifetime_s, log_dir=log_dir),
            facilitators={},
            payer=Payer(payer_account(), ""),
            pay_to=dev_account(PAY_TO).address,
            log_dir=log_dir,
            lifetime_s=lifetime_s,
            confirmation_timeout_s=confirmation_timeout_s,
        )
        try:
            # Start both facilitators while the contracts deploy: their start-ups overlap.
            for kind in KINDS:
                bed.facilitators[kind] = bed._launch(kind, kind, wait=False)
            bed.payer = Payer(payer_account(), bed.chain.deploy().usdc)
            wait_ready(*bed.facilitators.values())
        except BaseException:
            bed.stop()
            raise
        bed.startup_s = time.monotonic() - started
        return bed

    def _launch(
        self, name: str, kind: Kind, *, port: int | None = None, wait: bool = True
    ) -> Facilitator:
        start = start_python_facilitator if kind == "python" else start_ts_facilitator
        return start(
            self.chain.rpc_url,
            name=name,
            port=port,
            lifetime_s=self.lifetime_s,
            confirmation_timeout_s=self.confirmation_timeout_s,
            log_dir=self.log_dir,
            wait=wait,
        )

    @property
    def stranger(self) -> LocalAccount:
        return dev_account(STRANGER)

    def stop(self) -> None:
        for facilitator in self.facilitators.values():
            facilitator.stop()
        self.chain.stop()

    def kill(self, name: str) -> None:
        """Crash a facilitator (SIGKILL): its port refuses connections afterwards."""
        self.facilitators[name].kill()

    def freeze(self, name: str) -> None:
        """Hang a facilitator (SIGSTOP): requests reach its socket but are never answered."""
        self.facilitators[name].freeze()

    def thaw(self, name: str) -> None:
        """Resume a frozen facilitator (SIGCONT); a no-op for one that is not frozen."""
        self.facilitators[name].thaw()

    def restart(self, name: str) -> Facilitator:
        """Start a stopped or killed facilitator again on its old URL."""
        old = self.facilitators[name]
        old.stop()
        self.facilitators[name] = self._launch(name, old.kind, port=old.port)
        return self.facilitators[name]

    def balances(self) -> dict[str, int]:
        """USDC balances (atomic units) of the payer and the payee."""
        return {
            "payer": self.chain.balance(self.payer.address),
            "pay_to": self.chain.balance(self.pay_to),
        }

    def aggregator_config(self, *order: str, rpc: bool = True, **upstream: Any) -> dict[str, Any]:
        """An aggregator configuration with the facilitators as upstreams, in ``order``.

        Its ledger lives with the test bed's logs; ``rpc`` lets it read the local chain to
        resolve ambiguous settles (never a public RPC: the test bed is all on loopback).
        """
        names = order or tuple(self.facilitators)
        return {
            "upstreams": [
                {
                    "name": name,
                    "url": self.facilitators[name].url,
                    "priority": priority,
                    "timeout_s": 10,
                    "settle_timeout_s": 60,
                    "connect_timeout_s": 1,
                    **upstream,
                }
                for priority, name in enumerate(names)
            ],
            "health": {
                "interval_s": 2,
                "unknown_retry_s": 0.2,
                "timeout_s": 2,
                "startup_wait_s": 5,
            },
            "ledger": {"url": f"sqlite:///{self.log_dir / 'ledger.db'}", "public_rpcs": False},
            "networks": {"eip155:84532": {"rpc_url": self.chain.rpc_url}} if rpc else {},
        }
