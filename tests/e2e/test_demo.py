"""``x402-aggregator demo`` end to end, as a newcomer runs it."""

from __future__ import annotations

import subprocess
import sys


def test_demo_pays_fails_over_and_ends_with_demo_ok() -> None:
    """The demo settles real payments, fails over, tears down and ends with a `demo ok:` line."""
    result = subprocess.run(
        [sys.executable, "-m", "x402_aggregator", "demo", "--payments", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo ok: 3 payments settled, failover python -> typescript"), last
    assert "0.030000 USDC moved" in last
