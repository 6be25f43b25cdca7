"""Take docs/dashboard.png: two fake facilitators, ~20 s of mixed traffic with an outage, Chromium.

Run from the repository root: ``.venv/bin/python docs/screenshot.py [--out docs/dashboard.png]``.
Needs Debian's ``/usr/bin/chromium`` (or ``--chromium PATH``) and the test extras installed.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from playwright.sync_api import sync_playwright

from x402_aggregator.config import load_config
from x402_aggregator.localnet.browser import CHROMIUM, CHROMIUM_ARGS
from x402_aggregator.localnet.fake_facilitator import FakeFacilitator, Mode
from x402_aggregator.localnet.live import LiveServer
from x402_aggregator.localnet.payloads import v1_body, v2_body
from x402_aggregator.server import create_app

TRAFFIC_S = 21.0
SETTLES_UNTIL_S = 19.0  # verifies only after this, so the last settlements stay on screen
OUTAGE = (5.0, 9.0)  # seconds into the run during which the primary is down
NETWORK_BREAK_S = 15.5  # then the primary's eip155:84532 RPC breaks: it is degraded at the end
REJECT_S, PENDING_S = 18.0, 18.5  # a settle rejected, then one still pending on chain
PAYERS = [
    "0x857b06519E91e3A54538791bDbb0E22373e36b66",
    "0x3f1Ad2b9E4c07a1D6e8b5C2f90aE7d41c6B2e0F9",
    "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
]


def payment(rng: random.Random) -> dict[str, Any]:
    """A v2 (mostly) or v1 body from one of a few payers, with a fresh nonce."""
    nonce = "0x" + rng.randbytes(32).hex()
    amount = str(rng.choice([1000, 10000, 250000]))
    if rng.random() < 0.2:
        body = v1_body(nonce=nonce, amount=amount)
    else:
        body = v2_body(nonce=nonce, amount=amount)
    body["paymentPayload"]["payload"]["authorization"]["from"] = rng.choice(PAYERS)
    return body


def send_traffic(client: httpx.Client, primary: FakeFacilitator, backup: FakeFacilitator) -> int:
    """Mixed verifies and settles for TRAFFIC_S seconds, with incidents; returns the count."""
    rng = random.Random(402)  # noqa: S311 - traffic shape, not security

    def each(op: Literal["settle", "*"], mode: Mode, **params: Any) -> Callable[[], None]:
        def apply() -> None:
            for fake in (primary, backup):
                fake.set(op, mode, **params)

        return apply

    events: list[tuple[float, Callable[[], object]]] = [
        (OUTAGE[0], primary.stop),  # connections refused: failovers, ejection, unhealthy
        (OUTAGE[1], primary.start),  # same port: probes bring it back
        (NETWORK_BREAK_S, lambda: primary.set("*", Mode.HTTP500, network="eip155:84532")),
        (REJECT_S, each("settle", Mode.INVALID, times=1)),
        (PENDING_S, each("settle", Mode.PENDING, times=1)),
    ]
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < TRAFFIC_S:
        while events and elapsed >= events[0][0]:
            events.pop(0)[1]()
        body = payment(rng)
        client.post("/verify", json=body)
        if elapsed < SETTLES_UNTIL_S and rng.random() < 0.45:
            client.post("/settle", json=body)
        sent += 1
        time.sleep(rng.uniform(0.02, 0.06))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("dashboard.png"))
    parser.add_argument("--chromium", default=str(CHROMIUM))
    args = parser.parse_args()

    primary = FakeFacilitator("primary", latency_s=0.01).start()
    backup = FakeFacilitator("backup", latency_s=0.004).start()
    config = load_config(
        {
            "upstreams": [
                {"name": "primary", "url": primary.url, "priority": 0, "weight": 3},
                {"name": "backup", "url": backup.url, "priority": 0, "weight": 1},
            ],
            "routing": {"strategy": "weighted"},
            "health": {
                "interval_s": 0.5,
                "unknown_retry_s": 0.2,
                "unhealthy_threshold": 2,
                "startup_wait_s": 2.0,
                "outlier": {"base_ejection_s": 8.0},
            },
        }
    )
    server = LiveServer(create_app(config)).start()
    playwright = sync_playwright().start()
    browser = None
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, args=CHROMIUM_ARGS, timeout=30_000
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url + "/", timeout=15_000)  # open early: the page lives through it
            sent = send_traffic(client, primary, backup)
            # Now, while traffic flows: the page refreshed less than 2 s ago.
            page.screenshot(path=str(args.out), timeout=15_000)
        print(f"{sent} payments sent; wrote {args.out}")
    finally:
        if browser is not None:
            browser.close()
        playwright.stop()
        server.stop()
        primary.stop()
        backup.stop()


if __name__ == "__main__":
    main()
