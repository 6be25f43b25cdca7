"""Solidity the test bed compiles itself, offline with solcjs, cached by source and settings.

Bytecode comes only from sources in this package or in registry packages (Uniswap's Permit2
ships in ``@uniswap/v4-periphery``); the first compile of Permit2 (via-IR) takes ~10 s, later
test beds read the cache in ``$XDG_CACHE_HOME/x402-aggregator``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .npm import TestbedSetupError, node_modules

_HERE = Path(__file__).parent
PERMIT2_SOURCES = "@uniswap/v4-periphery/lib/permit2"


@dataclass(frozen=True, slots=True)
class Bytecode:
    creation: str
    runtime: str


def compiled(
    source: Path,
    *,
    solc: str = "solc",
    via_ir: bool = False,
    runs: int = 200,
    roots: tuple[Path, ...] = (),
) -> dict[str, Bytecode]:
    """Every contract ``source`` defines, compiled once per source text and settings."""
    options = ["--solc", solc, "--runs", str(runs), *(["--via-ir"] if via_ir else [])]
    options += [arg for root in roots for arg in ("--root", str(root))]
    digest = hashlib.sha256(
        source.read_bytes() + (_HERE / "compile.cjs").read_bytes() + " ".join(options).encode()
    ).hexdigest()[:16]
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "x402-aggregator"
    cached = cache_dir / f"{source.stem}-{digest}.json"
    if not cached.exists():
        result = subprocess.run(  # noqa: S603 - our own script
            [shutil.which("node") or "node", str(_HERE / "compile.cjs"), str(source), *options],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "NODE_PATH": str(node_modules())},
            check=False,
        )
        if result.returncode != 0:
            raise TestbedSetupError(f"compiling {source.name} failed: {result.stderr.strip()}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(result.stdout)
        partial.replace(cached)  # atomic: parallel test beds never read half a file
    contracts = json.loads(cached.read_text())
    return {name: Bytecode(code["creation"], code["runtime"]) for name, code in contracts.items()}


def multicall() -> Bytecode:
    """Our Multicall3-compatible contract (the SDKs batch reads through Multicall3)."""
    return compiled(_HERE / "Multicall.sol")["Multicall"]


def permit2() -> Bytecode:
    """Uniswap's Permit2 from its published source, with its own settings (0.8.17, via-IR)."""
    root = node_modules() / PERMIT2_SOURCES
    if not (root / "src" / "Permit2.sol").exists():
        raise TestbedSetupError(f"Permit2's sources are missing at {root}: run `npm ci`")
    code = compiled(
        root / "src" / "Permit2.sol",
        solc="solc-0.8.17",
        via_ir=True,
        runs=1_000_000,
        roots=(root / "src", root),
    )
    return code["Permit2"]


def permit2_parts() -> dict[str, Bytecode]:
    """The plain ERC-20 and the x402-compatible Permit2 proxies (``Permit2Parts.sol``)."""
    return compiled(_HERE / "Permit2Parts.sol")
