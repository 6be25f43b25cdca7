"""Permit2 on the test bed's chain: Uniswap's Permit2 at its canonical address, the x402 proxies
at the addresses the SDKs call, and a plain ERC-20 the payer has approved to Permit2.

Permit2 caches its EIP-712 domain separator (which names its own address) when it is built, so
it is deployed normally and its code then moved to the canonical address with the separator
recomputed for that address; the proxies hold no state and are placed there directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3

from .contracts import permit2, permit2_parts
from .npm import TestbedSetupError

PERMIT2 = "0x000000000022D473030F116dDEE9F6B43aC78BA3"
EXACT_PROXY = "0x402085c248EeA27D92E8b30b2C58ed07f9E20001"
UPTO_PROXY = "0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002"
TOKEN_NAME, TOKEN_SYMBOL, TOKEN_DECIMALS = "Plain Test Dollar", "PTD", 6
#: Gas money the bed gives the payer: approving Permit2 is the one transaction a wallet sends.
PAYER_GAS_WEI = 10**17

TOKEN_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": name,
        "stateMutability": mutability,
        "inputs": [{"name": f"a{i}", "type": kind} for i, kind in enumerate(inputs)],
        "outputs": [{"name": "", "type": out} for out in outputs],
    }
    for name, inputs, outputs, mutability in (
        ("balanceOf", ["address"], ["uint256"], "view"),
        ("allowance", ["address", "address"], ["uint256"], "view"),
        ("mint", ["address", "uint256"], [], "nonpayable"),
        ("approve", ["address", "uint256"], ["bool"], "nonpayable"),
    )
]
_NONCE_BITMAP_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "nonceBitmap",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "word", "type": "uint256"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]


@dataclass(frozen=True, slots=True)
class Permit2Deployment:
    token: str
    permit2: str = PERMIT2
    exact_proxy: str = EXACT_PROXY
    upto_proxy: str = UPTO_PROXY


def domain_separator(chain_id: int, verifying_contract: str) -> bytes:
    """Permit2's EIP-712 domain separator (name "Permit2", no version) at an address."""
    typehash = keccak(text="EIP712Domain(string name,uint256 chainId,address verifyingContract)")
    return keccak(
        encode(
            ["bytes32", "bytes32", "uint256", "address"],
            [typehash, keccak(text="Permit2"), chain_id, verifying_contract],
        )
    )


def deploy_permit2(w3: Web3, deployer: str, payer: LocalAccount, funds: int) -> Permit2Deployment:
    """Place Permit2 and the proxies, deploy the token, fund the payer and approve Permit2."""
    chain_id = w3.eth.chain_id
    built = _send(w3, {"from": deployer, "data": permit2().creation})
    temporary = str(built["contractAddress"])
    runtime = w3.eth.get_code(Web3.to_checksum_address(temporary)).hex().removeprefix("0x")
    old = domain_separator(chain_id, temporary).hex()
    new = domain_separator(chain_id, PERMIT2).hex()
    if old not in runtime:
        raise TestbedSetupError("Permit2's code does not hold its domain separator")
    _rpc(w3, "anvil_setCode", [PERMIT2, "0x" + runtime.replace(old, new)])
    parts = permit2_parts()
    _rpc(w3, "anvil_setCode", [EXACT_PROXY, parts["ExactPermit2Proxy"].runtime])
    _rpc(w3, "anvil_setCode", [UPTO_PROXY, parts["UptoPermit2Proxy"].runtime])

    arguments = encode(["string", "string"], [TOKEN_NAME, TOKEN_SYMBOL]).hex()
    created = _send(w3, {"from": deployer, "data": parts["PlainToken"].creation + arguments})
    token = w3.eth.contract(address=created["contractAddress"], abi=TOKEN_ABI)
    _send(w3, token.functions.mint(payer.address, funds).build_transaction({"from": deployer}))

    _rpc(w3, "anvil_setBalance", [payer.address, hex(PAYER_GAS_WEI)])
    approve = token.functions.approve(PERMIT2, 2**256 - 1).build_transaction(
        {"from": payer.address, "nonce": w3.eth.get_transaction_count(payer.address)}
    )
    signed = payer.sign_transaction(approve)
    _wait(w3, w3.eth.send_raw_transaction(signed.raw_transaction))
    return Permit2Deployment(token=str(token.address))


def nonce_used(w3: Web3, owner: str, nonce: int) -> bool:
    """Whether Permit2 has consumed (or the owner cancelled) this unordered nonce."""
    bitmap = w3.eth.contract(address=Web3.to_checksum_address(PERMIT2), abi=_NONCE_BITMAP_ABI)
    word = bitmap.functions.nonceBitmap(Web3.to_checksum_address(owner), nonce >> 8).call()
    return bool(int(word) >> (nonce & 0xFF) & 1)


def _rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    if "error" in response:
        raise TestbedSetupError(f"{method}: {response['error']}")
    return response.get("result")


def _send(w3: Web3, transaction: Any) -> Any:
    return _wait(w3, w3.eth.send_transaction(transaction))


def _wait(w3: Web3, tx: Any) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    if receipt["status"] != 1:
        raise TestbedSetupError(f"test bed transaction {tx.hex()} reverted")
    return receipt
