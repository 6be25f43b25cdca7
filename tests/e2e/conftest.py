"""One real x402 network for the session: anvil + USDC + the Python and TypeScript facilitators."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from x402_aggregator.aggregator import Aggregator
from x402_aggregator.config import load_config
from x402_aggregator.localnet.live import LiveServer
from x402_aggregator.localnet.network import TestBed
from x402_aggregator.server import create_app


@pytest.fixture(scope="session")
def testbed() -> Iterator[TestBed]:
    bed = TestBed.start(lifetime_s=1200)
    try:
        yield bed
    finally:
        bed.stop()


AggregatorClient = Callable[..., httpx.Client]


@pytest.fixture
def through(testbed: TestBed) -> Iterator[AggregatorClient]:
    """Serve an aggregator in front of the test bed's facilitators; return a client for it."""
    started: list[tuple[LiveServer, httpx.Client]] = []

    def make(*order: str, **upstream_overrides: Any) -> httpx.Client:
        config = load_config(testbed.aggregator_config(*order, **upstream_overrides))
        server = LiveServer(create_app(aggregator=Aggregator(config))).start()
        client = httpx.Client(base_url=server.url, timeout=120)
        started.append((server, client))
        return client

    yield make
    for server, client in started:
        client.close()
        server.stop()


def wait_healthy(client: httpx.Client, name: str, timeout_s: float = 20) -> None:
    """Wait until the aggregator behind ``client`` reports upstream ``name`` healthy in /status."""
    deadline = time.monotonic() + timeout_s
    while True:
        [entry] = [up for up in client.get("/status").json()["upstreams"] if up["name"] == name]
        if entry["state"] == "healthy":
            return
        assert time.monotonic() < deadline, f"{name} not healthy after {timeout_s:g} s: {entry}"
        time.sleep(0.1)
