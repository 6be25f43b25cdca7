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


def test_an_unknown_demo_payment_kind_is_a_usage_error() -> None:
    result = subprocess.run(
        [*DEMO, "--payment", "bitcoin"], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "--payment must be one of eip3009, svm" in result.stderr, result.stderr


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
