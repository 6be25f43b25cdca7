"""Added latency and throughput of the aggregator versus calling a facilitator directly.

Runs, side by side in one go, a fake facilitator (zero work) and the aggregator in front of it, each
in its own process, and a load generator in this process (aiohttp, keep-alive):

1. sequential verifies, direct and through the aggregator: p50/p90/p99 and the difference;
2. closed-loop verifies with N in flight for a few seconds: requests/s, direct and through.

    python bench/overhead.py [--requests 2000] [--concurrency 32] [--seconds 5]

Everything listens on 127.0.0.1; every loop is bounded by count or time. A fuller suite
(open-loop rates, nginx, faults, memory) belongs in `bench/` as the benchmarks issue lands.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from x402_aggregator.testing.live import free_port
from x402_aggregator.testing.payloads import v2_body


def start(args: list[str], ready: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if ready in line:
            return process
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError(f"{args} did not start")


async def sequential(url: str, body: bytes, count: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # warm the pools and caches
            async with session.post(url, data=body) as response:
                await response.read()
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url, data=body) as response:
                await response.read()
                assert response.status == 200
            samples.append((time.perf_counter() - started) * 1000)
    return samples


async def closed_loop(url: str, body: bytes, concurrency: int, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with session.post(url, data=body) as response:
                    await response.read()
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    fake_port, agg_port = free_port(), free_port()
    fake = start(
        [
            "-m",
            "x402_aggregator.testing.fake_facilitator",
            "--port",
            str(fake_port),
            "--lifetime-s",
            "300",
        ],
        "ready",
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {agg_port}, log_level: warning}}\n"
            f"upstreams:\n  - {{name: fake, url: 'http://127.0.0.1:{fake_port}'}}\n"
        )
        env = {**os.environ}
        agg = subprocess.Popen(
            [sys.executable, "-m", "x402_aggregator", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            time.sleep(0.5)
            asyncio.run(_wait(f"http://127.0.0.1:{agg_port}/healthz"))
            body = orjson.dumps(v2_body())
            direct = f"http://127.0.0.1:{fake_port}/verify"
            through = f"http://127.0.0.1:{agg_port}/verify"
            report(args, body, direct, through)
        finally:
            agg.terminate()
            fake.terminate()
            agg.wait(10)
            fake.wait(10)


def report(args: argparse.Namespace, body: bytes, direct: str, through: str) -> None:
    d = asyncio.run(sequential(direct, body, args.requests))
    t = asyncio.run(sequential(through, body, args.requests))
    print(f"sequential verifies, n={args.requests} each (ms)")
    print("| path | p50 | p90 | p99 |")
    print("|---|---|---|---|")
    for name, s in (("direct", d), ("through aggregator", t)):
        print(f"| {name} | {pct(s, 50):.3f} | {pct(s, 90):.3f} | {pct(s, 99):.3f} |")
    print(
        f"| added | {pct(t, 50) - pct(d, 50):.3f} | {pct(t, 90) - pct(d, 90):.3f} "
        f"| {pct(t, 99) - pct(d, 99):.3f} |"
    )
    rd = asyncio.run(closed_loop(direct, body, args.concurrency, args.seconds))
    rt = asyncio.run(closed_loop(through, body, args.concurrency, args.seconds))
    print(f"\nclosed loop, {args.concurrency} in flight, {args.seconds:g} s each (verify/s)")
    print(f"| direct | {rd:,.0f} |\n| through aggregator | {rt:,.0f} |")


async def _wait(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("aggregator did not start")


if __name__ == "__main__":
    main()
