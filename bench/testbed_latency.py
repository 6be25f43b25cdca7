"""Real payments on the local test bed: direct to each facilitator vs through the aggregator.

    python bench/testbed_latency.py [--calls 20] [--starts 3]

Starts the whole network ``--starts`` times (reporting start-up), then for each facilitator
makes ``--calls`` verifies and settles of fresh signed payments directly and through an
aggregator that has that facilitator as its primary, side by side in one run. Loopback only;
every process has a bounded lifetime.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from x402_aggregator.aggregator import Aggregator
from x402_aggregator.config import load_config
from x402_aggregator.server import create_app
from x402_aggregator.testbed.network import TestBed
from x402_aggregator.testing.live import LiveServer

AMOUNT = 10_000


def timed(client: httpx.Client, path: str, body: dict[str, object], flag: str) -> float:
    started = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = (time.perf_counter() - started) * 1000
    if response.json().get(flag) is not True:
        raise RuntimeError(f"{path} failed: {response.text}")
    return elapsed


def measure(bed: TestBed, client: httpx.Client, calls: int) -> tuple[list[float], list[float]]:
    verify, settle = [], []
    for _ in range(calls + 2):
        payment = bed.payer.pay(bed.pay_to, AMOUNT)
        verify.append(timed(client, "/verify", payment.body, "isValid"))
        settle.append(timed(client, "/settle", payment.body, "success"))
    return verify[2:], settle[2:]  # the first calls warm connections and caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()

    starts = []
    for _ in range(args.starts - 1):
        bed = TestBed.start(lifetime_s=300)
        starts.append(bed.startup_s)
        stopping = time.perf_counter()
        bed.stop()
        print(f"start {bed.startup_s:.2f} s, stop {time.perf_counter() - stopping:.2f} s")
    bed = TestBed.start(lifetime_s=600)
    starts.append(bed.startup_s)
    print(f"stack start-up over {len(starts)} runs: {', '.join(f'{s:.2f}' for s in starts)} s\n")
    print(f"milliseconds, {args.calls} calls each")
    print("| facilitator | path | verify p50 | verify p90 | settle p50 | settle p90 |")
    print("|---|---|---|---|---|---|")
    try:
        for name in bed.facilitators:
            others = [n for n in bed.facilitators if n != name]
            config = load_config(bed.aggregator_config(name, *others))
            with (
                LiveServer(create_app(aggregator=Aggregator(config))) as server,
                httpx.Client(base_url=bed.facilitators[name].url, timeout=60) as direct,
                httpx.Client(base_url=server.url, timeout=60) as through,
            ):
                for label, client in (("direct", direct), ("through aggregator", through)):
                    v, s = measure(bed, client, args.calls)
                    print(
                        f"| {name} | {label} | {statistics.median(v):.1f} | "
                        f"{statistics.quantiles(v, n=10)[8]:.1f} | {statistics.median(s):.1f} | "
                        f"{statistics.quantiles(s, n=10)[8]:.1f} |"
                    )
    finally:
        bed.stop()


if __name__ == "__main__":
    main()
