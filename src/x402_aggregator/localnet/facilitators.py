"""Start the test bed's two real facilitators (Python SDK and TypeScript SDK) as child processes.

Each runs with its own anvil dev account, so their transaction nonces never collide. Start both
with ``wait=False`` and then ``wait_ready`` them, so their start-up times overlap::

    py = start_python_facilitator(chain.rpc_url, wait=False)
    ts = start_ts_facilitator(chain.rpc_url, wait=False)
    wait_ready(py, ts)

A killed facilitator comes back on the same URL by passing its port again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .chain import PYTHON_FACILITATOR, TS_FACILITATOR, dev_account
from .live import free_port
from .npm import TestbedSetupError, node_modules
from .process import Child, spawn, wait_for_line
from .solana import keypair

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
_TS_SCRIPT = Path(__file__).with_name("ts_facilitator.cjs")

Kind = Literal["python", "typescript"]


@dataclass
class Facilitator:
    """A running facilitator process and where to reach it."""

    name: str
    kind: Kind
    url: str
    address: str  #: the account it pays gas from and signs settlements with
    child: Child
    #: Its Solana fee payer (None when it runs without Solana).
    svm_address: str | None = None

    @property
    def port(self) -> int:
        """Pass it back to ``start_*`` to restart a killed facilitator on the same URL."""
        return int(self.url.rsplit(":", 1)[1])

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> Facilitator:
        """Block until it accepts connections; ``ProcessError`` (with its log tail) otherwise."""
        wait_for_line(self.child, f"ready {self.url}", timeout_s)
        return self

    def stop(self) -> None:
        self.child.stop()

    def kill(self) -> None:
        """Die at once, like a crash (in-flight requests get no answer)."""
        self.child.kill()

    def freeze(self) -> None:
        """Hang it (SIGSTOP to its process group); always ``thaw`` it afterwards.

        The kernel still accepts connections and buffers requests, but nothing is read or
        answered: a settle sent to it times out after it may have "arrived".
        """
        os.killpg(self.child.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen facilitator (SIGCONT): it then handles what queued up meanwhile."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.pid, signal.SIGCONT)


def wait_ready(*facilitators: Facilitator, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait for several facilitators started with ``wait=False``."""
    for facilitator in facilitators:
        facilitator.wait_ready(timeout_s)


def _private_key(index: int) -> str:
    return "0x" + bytes(dev_account(index).key).hex()


def _svm_fee_payer(role: str, svm_rpc_url: str | None) -> tuple[dict[str, str], str | None]:
    """The env that gives a facilitator its Solana fee payer, and that fee payer's address."""
    if svm_rpc_url is None:
        return {}, None
    fee_payer = keypair(role)
    return {"SVM_FEE_PAYER_KEY": str(fee_payer)}, str(fee_payer.pubkey())


def start_python_facilitator(
    chain_rpc_url: str,
    *,
    name: str = "python",
    port: int | None = None,
    lifetime_s: float = 900,
    confirmation_timeout_s: float = 120,
    svm_rpc_url: str | None = None,
    log_dir: Path | None = None,
    wait: bool = True,
) -> Facilitator:
    """The official Python SDK facilitator (``py_facilitator``) on ``chain_rpc_url``.

    With ``svm_rpc_url`` it also settles Solana payments, fees paid by ``keypair("python")``.
    """
    port = port or free_port()
    svm_env, svm_address = _svm_fee_payer("python", svm_rpc_url)
    svm_args = ["--svm-rpc-url", svm_rpc_url] if svm_rpc_url else []
    child = spawn(
        name,
        [
            sys.executable,
            "-m",
            "x402_aggregator.localnet.py_facilitator",
            "--port",
            str(port),
            "--rpc-url",
            chain_rpc_url,
            "--confirmation-timeout-s",
            f"{confirmation_timeout_s:g}",
            "--lifetime-s",
            f"{lifetime_s:g}",
            *svm_args,
        ],
        lifetime_s=lifetime_s + 5,  # the server ends itself first; ``timeout`` is the backstop
        env={"FACILITATOR_PRIVATE_KEY": _private_key(PYTHON_FACILITATOR), **svm_env},
        log_dir=log_dir,
    )
    address = dev_account(PYTHON_FACILITATOR).address
    facilitator = Facilitator(name, "python", f"http://{HOST}:{port}", address, child, svm_address)
    return facilitator.wait_ready() if wait else facilitator


def start_ts_facilitator(
    chain_rpc_url: str,
    *,
    name: str = "typescript",
    port: int | None = None,
    lifetime_s: float = 900,
    confirmation_timeout_s: float = 120,
    nonce_manager: bool = True,
    svm_rpc_url: str | None = None,
    log_dir: Path | None = None,
    wait: bool = True,
) -> Facilitator:
    """The official TypeScript SDK facilitator (``ts_facilitator.cjs``) on ``chain_rpc_url``.

    ``nonce_manager=False`` is a deliberate fault: concurrent settles then reuse tx nonces.
    With ``svm_rpc_url`` it also settles Solana payments, fees paid by ``keypair("typescript")``.
    """
    node = shutil.which("node")
    if node is None:
        raise TestbedSetupError("node is not installed (the TypeScript facilitator needs it)")
    port = port or free_port()
    svm_env, svm_address = _svm_fee_payer("typescript", svm_rpc_url)
    if svm_rpc_url:
        svm_env["SVM_RPC_URL"] = svm_rpc_url
    child = spawn(
        name,
        [node, str(_TS_SCRIPT)],
        lifetime_s=lifetime_s + 5,
        env={
            "NODE_PATH": str(node_modules()),
            "PORT": str(port),
            "RPC_URL": chain_rpc_url,
            "FACILITATOR_PRIVATE_KEY": _private_key(TS_FACILITATOR),
            "LIFETIME_S": f"{lifetime_s:g}",
            "CONFIRMATION_TIMEOUT_S": f"{confirmation_timeout_s:g}",
            "NONCE_MANAGER": "1" if nonce_manager else "0",
            **svm_env,
        },
        log_dir=log_dir,
    )
    address = dev_account(TS_FACILITATOR).address
    facilitator = Facilitator(
        name, "typescript", f"http://{HOST}:{port}", address, child, svm_address
    )
    return facilitator.wait_ready() if wait else facilitator
