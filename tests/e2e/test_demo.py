"""``x402-aggregator demo`` end to end, as a newcomer runs it."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time

DEMO = [sys.executable, "-m", "x402_aggregator", "demo", "--payments", "2"]


def test_demo_pays_fails_over_and_ends_with_demo_ok() -> None:
    """The demo settles real payments, fails over, tears down and ends with a `demo ok:` line."""
    result = subprocess.run(DEMO, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo ok: 3 payments settled, failover python -> typescript"), last
    assert "0.030000 USDC moved" in last


def test_demo_with_solana_payments_steers_to_the_live_fee_payer() -> None:
    """``--payment svm``: the dead fee payer's payment is refused, /supported moves on, all land."""
    result = subprocess.run(
        [*DEMO, "--payment", "svm"], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "nobody else can sign it" in result.stdout, result.stdout
    assert "/supported now advertises typescript's fee payer" in result.stdout, result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo ok: 3 payments settled, failover python -> typescript"), last
    assert "0.030000 USDC moved" in last


def test_demo_with_permit2_payments_in_a_plain_token_fails_over() -> None:
    """``--payment permit2``: exact by Permit2 in an ERC-20 without EIP-3009, same story."""
    result = subprocess.run(
        [*DEMO, "--payment", "permit2"], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Permit2     0x000000000022D473030F116dDEE9F6B43aC78BA3" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo ok: 3 payments settled, failover python -> typescript"), last
    assert "0.030000 PTD moved" in last


def test_demo_with_upto_payments_settles_below_the_maximum_and_follows_the_facilitator() -> None:
    """``--payment upto``: each signed for 0.01, settled for 0.0075; bound to the advertised
    facilitator, so after the kill /supported moves on before the last payment."""
    result = subprocess.run(
        [*DEMO, "--payment", "upto"], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0.010000 PTD verified, 0.007500 PTD settled by python" in result.stdout
    assert "/supported now advertises typescript's facilitator address" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo ok: 3 payments settled, failover python -> typescript"), last
    assert "0.022500 PTD moved, each below its 0.010000 PTD maximum" in last


def test_an_unknown_demo_payment_kind_is_a_usage_error() -> None:
    result = subprocess.run(
        [*DEMO, "--payment", "bitcoin"], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "--payment must be one of eip3009, svm, permit2, upto" in result.stderr, result.stderr


def test_demo_keep_runs_until_interrupted() -> None:
    """With --keep everything stays up until Ctrl-C, then the demo tears down and exits 0."""
    process = subprocess.Popen(
        [*DEMO, "--keep"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None

    def read() -> None:
        for line in process.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        seen: list[str] = []
        while not any("press Ctrl-C" in line for line in seen):
            assert time.monotonic() < deadline, "".join(seen)
            seen.append(lines.get(timeout=90))

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait(timeout=10)
        reader.join(timeout=10)
        process.stdout.close()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert rest[-1].startswith("demo ok:"), rest
