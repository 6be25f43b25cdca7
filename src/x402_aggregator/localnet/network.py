"""The whole local x402 network in one object: chain, USDC, both facilitators, a payer.

bed = TestBed.start()
try:
    payment = bed.payer.pay(bed.pay_to, 10_000)
    ...  # POST payment.body to an aggregator configured with bed.aggregator_config()
finally:
    bed.stop()

``TestBed.start(svm=True)`` adds a local Solana VM with a USDC-like SPL token: both facilitators
then also settle Solana ``exact`` payments, each with its own fee payer, and ``bed.svm_payer``
builds them (``bed.svm_payer.pay(bed.svm_pay_to, 10_000, bed.svm_fee_payer("python"))``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from .chain import (
    NETWORK,
    PAY_TO,
    Chain,
    dev_account,
    payer_account,
    start_chain,
)
from .facilitators import (
    Facilitator,
    Kind,
    start_python_facilitator,
    start_ts_facilitator,
    wait_ready,
)
from .npm import TestbedSetupError
from .payer import Payer
from .permit2_payer import Permit2Payer
from .solana import SVM_NETWORK, Solana, address, keypair, start_solana
from .svm_payer import SvmPayer

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
    #: The local Solana VM and its payer (``start(svm=True)`` only).
    solana: Solana | None = None
    svm_payer: SvmPayer | None = None
    #: Pays by Permit2 (``exact`` and ``upto``) in the plain token; set once the chain is deployed.
    permit2_payer: Permit2Payer | None = None

    __test__ = False  # not a pytest test class, despite the name

    @classmethod
    def start(
        cls,
        *,
        lifetime_s: float = 900,
        confirmation_timeout_s: float = 5,
        log_dir: Path | None = None,
        svm: bool = False,
    ) -> TestBed:
        """Bring the network up: anvil, deployments, then both facilitators in parallel.

        ``confirmation_timeout_s`` is how long a facilitator waits for a receipt before it answers
        ``settlement_pending``; anvil mines at once, so only a stalled chain ever reaches it.
        ``svm`` starts the Solana VM first (a fraction of a second), so that both facilitators
        come up settling Solana too.
        """
        started = time.monotonic()
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="x402-testbed-"))
        solana = start_solana(lifetime_s=lifetime_s, log_dir=log_dir) if svm else None
        try:
            chain = start_chain(lifetime_s=lifetime_s, log_dir=log_dir)
        except BaseException:
            if solana is not None:
                solana.stop()
            raise
        bed = cls(
            chain=chain,
            facilitators={},
            payer=Payer(payer_account(), ""),
            pay_to=dev_account(PAY_TO).address,
            log_dir=log_dir,
            lifetime_s=lifetime_s,
            confirmation_timeout_s=confirmation_timeout_s,
            solana=solana,
            svm_payer=SvmPayer(keypair("payer"), solana.mint, solana.rpc_url) if solana else None,
        )
        try:
            # Start both facilitators while the contracts deploy: their start-ups overlap.
            for kind in KINDS:
                bed.facilitators[kind] = bed._launch(kind, kind, wait=False)
            deployment = bed.chain.deploy()
            bed.payer = Payer(payer_account(), deployment.usdc)
            bed.permit2_payer = Permit2Payer(payer_account(), deployment.permit2.token)
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
            svm_rpc_url=self.solana.rpc_url if self.solana else None,
            log_dir=self.log_dir,
            wait=wait,
        )

    @property
    def stranger(self) -> LocalAccount:
        return dev_account(STRANGER)

    @property
    def permit2(self) -> Permit2Payer:
        """The Permit2 payer (its token is ``bed.permit2.token``)."""
        if self.permit2_payer is None:
            raise TestbedSetupError("the chain is not deployed yet")
        return self.permit2_payer

    def token_balances(self) -> dict[str, int]:
        """Plain-token balances (atomic units) of the payer and the payee: Permit2 payments."""
        return self.balances(self.permit2.token)

    def evm_address(self, name: str) -> str:
        """The EVM signer of facilitator ``name``: the address an ``upto`` payment binds."""
        return self.facilitators[name].address

    @property
    def svm(self) -> tuple[Solana, SvmPayer]:
        """The Solana VM and its payer; ``TestbedSetupError`` if the bed runs without them."""
        if self.solana is None or self.svm_payer is None:
            raise TestbedSetupError("this test bed runs without Solana: start it with svm=True")
        return self.solana, self.svm_payer

    @property
    def svm_pay_to(self) -> str:
        """The Solana payee (its token account for the mint exists from the start)."""
        return address("pay_to")

    def svm_fee_payer(self, name: str) -> str:
        """The Solana fee payer of facilitator ``name``: the address its payments must name."""
        fee_payer = self.facilitators[name].svm_address
        if fee_payer is None:
            raise TestbedSetupError(f"facilitator {name} does not settle Solana")
        return fee_payer

    def svm_balances(self) -> dict[str, int]:
        """Token balances (atomic units) of the Solana payer and payee."""
        solana, payer = self.svm
        return {"payer": solana.balance(payer.address), "pay_to": solana.balance(self.svm_pay_to)}

    def stop(self) -> None:
        for facilitator in self.facilitators.values():
            facilitator.stop()
        self.chain.stop()
        if self.svm_payer is not None:
            self.svm_payer.close()
        if self.solana is not None:
            self.solana.stop()

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

    def balances(self, token: str | None = None) -> dict[str, int]:
        """Balances (atomic units) of the payer and the payee in ``token`` (default: USDC)."""
        return {
            "payer": self.chain.balance(self.payer.address, token),
            "pay_to": self.chain.balance(self.pay_to, token),
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
            # A real facilitator's first verifies (cold JIT, first RPC calls) take hundreds of ms
            # on a busy 2-core machine: past the adaptive 50 ms floor, the hedge would answer
            # from the backup and tests of routing order would flake.
            "routing": {"hedge_after_ms": 2000},
            "ledger": {"url": f"sqlite:///{self.log_dir / 'ledger.db'}", "public_rpcs": False},
            "networks": self._rpcs() if rpc else {},
        }

    def _rpcs(self) -> dict[str, Any]:
        rpcs: dict[str, Any] = {NETWORK: {"rpc_url": self.chain.rpc_url}}
        if self.solana is not None:
            rpcs[SVM_NETWORK] = {"rpc_url": self.solana.rpc_url}
        return rpcs
