"""A local Solana cluster for the test bed: litesvm behind a JSON-RPC server (``svm_rpc.cjs``).

It answers as Solana devnet (its genesis hash), so payments name the CAIP-2 network
``solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1`` (v1: ``solana-devnet``). Keys are derived from fixed
seeds (never use them on a real cluster): a USDC-like 6-decimal mint and a second one, a payer
holding both, a payee with token accounts for both, and one fee payer per facilitator.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from .live import free_port
from .npm import TestbedSetupError, node_modules
from .process import Child, spawn, wait_for_line

SVM_NETWORK = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
SVM_V1_NETWORK = "solana-devnet"
GENESIS_HASH = "EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG"
TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"  # noqa: S105 - a program id
TOKEN_2022_PROGRAM = "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"  # noqa: S105 - a program id
ASSOCIATED_TOKEN_PROGRAM = "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"  # noqa: S105 - a program id
USDC_DECIMALS = 6
PAYER_FUNDS = 1_000_000 * 10**USDC_DECIMALS
#: Lamports each fee payer, the payer and the payee start with (10 SOL).
STARTING_SOL = 10 * 10**9
ROLES = ("mint", "other_mint", "payer", "pay_to", "python", "typescript", "stranger")
_SCRIPT = Path(__file__).with_name("svm_rpc.cjs")


@cache
def keypair(role: str) -> Keypair:
    """The fixed keypair of a test bed role (``payer``, ``python``'s fee payer, ...)."""
    return Keypair.from_seed(hashlib.sha256(b"x402-aggregator solana " + role.encode()).digest())


def address(role: str) -> str:
    return str(keypair(role).pubkey())


def associated_token_account(owner: str, mint: str, token_program: str = TOKEN_PROGRAM) -> str:
    """The owner's associated token account for ``mint`` (where payments are sent)."""
    seeds = [bytes(Pubkey.from_string(x)) for x in (owner, token_program, mint)]
    found, _ = Pubkey.find_program_address(seeds, Pubkey.from_string(ASSOCIATED_TOKEN_PROGRAM))
    return str(found)


def setup_state() -> dict[str, Any]:
    """What the cluster starts with (passed to ``svm_rpc.cjs`` as ``SETUP``)."""
    mints = [address("mint"), address("other_mint")]
    owners = {"payer": PAYER_FUNDS, "pay_to": 0}
    return {
        "airdrops": [
            [address(role), STARTING_SOL]
            for role in ("payer", "pay_to", "python", "typescript", "stranger")
        ],
        "mints": [
            {
                "address": mint,
                "decimals": USDC_DECIMALS,
                "authority": address("mint"),
                "supply": PAYER_FUNDS,
                "program": TOKEN_PROGRAM,
            }
            for mint in mints
        ],
        "tokenAccounts": [
            {
                "address": associated_token_account(address(role), mint),
                "mint": mint,
                "owner": address(role),
                "amount": amount,
                "program": TOKEN_PROGRAM,
            }
            for mint in mints
            for role, amount in owners.items()
        ],
    }


class Solana:
    """A running local cluster; ``stop`` ends it."""

    def __init__(self, child: Child, rpc_url: str) -> None:
        self.child = child
        self.rpc_url = rpc_url
        self.mint = address("mint")
        self.other_mint = address("other_mint")
        self._http = httpx.Client(timeout=10)
        self._ids = 0

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """One JSON-RPC call; ``RuntimeError`` with the node's error if it refuses."""
        self._ids += 1
        body = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params or []}
        answer = self._http.post(self.rpc_url, json=body).json()
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def balance(self, owner: str, mint: str | None = None) -> int:
        """Token units in the owner's associated account for ``mint`` (0 when it has none)."""
        token_account = associated_token_account(owner, mint or self.mint)
        try:
            return int(self.rpc("getTokenAccountBalance", [token_account])["value"]["amount"])
        except RuntimeError:
            return 0

    def lamports(self, account: str) -> int:
        return int(self.rpc("getBalance", [account])["value"])

    def advance(self, blocks: int = 1) -> None:
        """Produce ``blocks`` blocks at once (151 outlive every blockhash handed out before)."""
        self.rpc("bed_advanceBlocks", [blocks])

    def pause(self) -> None:
        """Stop producing blocks: transactions sent meanwhile stay ``processed``."""
        self.rpc("bed_pause")

    def resume(self) -> None:
        self.rpc("bed_resume")

    def status(self, signature: str) -> dict[str, Any] | None:
        """The signature's status (``confirmationStatus``, ``err``), None if it never landed."""
        found: dict[str, Any] | None = self.rpc("getSignatureStatuses", [[signature]])["value"][0]
        return found

    def wait_finalized(self, signature: str, timeout_s: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(signature)
            if status and status["confirmationStatus"] == "finalized":
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{signature} not finalized after {timeout_s:g} s: {status}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._http.close()
        self.child.stop()


def start_solana(
    *, lifetime_s: float = 900, log_dir: Path | None = None, slot_ms: int = 400
) -> Solana:
    """Start the cluster on a free loopback port and wait until it answers."""
    node = shutil.which("node")
    if node is None:
        raise TestbedSetupError("node is not installed (the Solana test cluster needs it)")
    port = free_port()
    child = spawn(
        "solana",
        [node, str(_SCRIPT)],
        lifetime_s=lifetime_s + 5,
        env={
            "NODE_PATH": str(node_modules()),
            "PORT": str(port),
            "SLOT_MS": str(slot_ms),
            "LIFETIME_S": f"{lifetime_s:g}",
            "SETUP": json.dumps(setup_state()),
        },
        log_dir=log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_line(child, f"ready {url}", 20)
    except BaseException:
        child.stop()
        raise
    return Solana(child, url)
