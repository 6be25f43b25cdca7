"""Where the test bed's npm packages are (anvil, solc, the TypeScript SDK, Permit2's sources)."""

from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).parent


class TestbedSetupError(RuntimeError):
    """Something the test bed needs is missing (usually: npm packages not installed)."""


def node_modules() -> Path:
    """The project's ``node_modules`` (``$X402_TESTBED_NODE_MODULES``, else found upward)."""
    if os.environ.get("X402_TESTBED_NODE_MODULES"):
        return Path(os.environ["X402_TESTBED_NODE_MODULES"])
    for start in (_HERE, Path.cwd()):
        for folder in (start, *start.parents):
            if (folder / "node_modules" / "@x402" / "core").is_dir():
                return folder / "node_modules"
    raise TestbedSetupError(
        "the test bed's npm packages are missing: run `npm ci` in the project root "
        "(or set X402_TESTBED_NODE_MODULES)"
    )
