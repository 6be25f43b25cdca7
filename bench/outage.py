"""Client latency while the primary facilitator hangs, with and without hedging, and recovery.

    python bench/outage.py [--requests 10] [--timeout 2]

A fake primary (per-call timeout ``--timeout`` s) hangs on every verify; a healthy backup answers
in ~2 ms. Ten sequential verifies go through the aggregator, once with hedging (the default,
adaptive) and once without it (ejection only). Then the primary recovers and we time how long
until it serves again (health.interval_s 1). Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx

from x402_aggregator.aggregator import Aggregator
from x402_aggregator.config import load_config
from x402_aggregator.server import create_app
from x402_aggregator.testing.fake_facilitator import FakeFacilitator, Mode
from x402_aggregator.testing.live import LiveServer
from x402_aggregator.testing.payloads import v2_body


def scenario(hedge: bool, requests: int, timeout_s: float) -> dict[str, Any]:
    with (
        FakeFacilitator("primary", latency_s=0.002) as primary,
        FakeFacilitator("backup", latency_s=0.002) as backup,
    ):
        config = load_config(
            {
                "upstreams": [
                    {"name": "primary", "url": primary.url, "priority": 0, "timeout_s": timeout_s},
                    {"name": "backup", "url": backup.url, "priority": 1},
                ],
                "routing": {"hedge": hedge},
                "health": {"interval_s": 1, "unknown_retry_s": 0.5},
            }
        )
        with (
            LiveServer(create_app(aggregator=Aggregator(config))) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            for _ in range(20):  # steady state: the adaptive hedge delay learns the p95
                client.post("/verify", json=v2_body())
            primary.set("verify", Mode.HANG)
            latencies, errors = [], 0
            started = time.monotonic()
            for _ in range(requests):
                t = time.perf_counter()
                response = client.post("/verify", json=v2_body())
                latencies.append((time.perf_counter() - t) * 1000)
                errors += response.status_code != 200 or not response.json().get("isValid")
            total = time.monotonic() - started
            primary.set("verify", Mode.OK)
            recovered = time.monotonic()
            while (
                client.post("/verify", json=v2_body()).headers["X-Aggregator-Upstream"] != "primary"
            ):
                if time.monotonic() - recovered > 60:
                    break
                time.sleep(0.05)
            back_after = time.monotonic() - recovered
    return {
        "hedge": hedge,
        "total_s": total,
        "errors": errors,
        "p50": statistics.median(latencies),
        "max": max(latencies),
        "back_s": back_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    print(f"{args.requests} sequential verifies, primary hung (timeout {args.timeout:g} s)")
    print("| hedging | total (s) | client errors | p50 (ms) | max (ms) | primary back after (s) |")
    print("|---|---|---|---|---|---|")
    for hedge in (True, False):
        r = scenario(hedge, args.requests, args.timeout)
        print(
            f"| {'adaptive' if hedge else 'off'} | {r['total_s']:.2f} | {r['errors']} | "
            f"{r['p50']:.1f} | {r['max']:.1f} | {r['back_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
