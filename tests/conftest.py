"""Shared fixtures: fake facilitators and the aggregator, both on real loopback sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.postgres import PostgresServer
from x402_aggregator.aggregator import Aggregator
from x402_aggregator.config import load_config
from x402_aggregator.localnet.fake_facilitator import FakeFacilitator
from x402_aggregator.localnet.live import LiveServer
from x402_aggregator.server import create_app

FakeFactory = Callable[..., FakeFacilitator]


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; each test takes its own database."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(autouse=True)
def private_ledger(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test gets its own SQLite ledger, and never reads a public chain RPC.

    Set through the environment, so aggregators started as subprocesses inherit it; a test
    that wants another ledger sets ``X402_AGGREGATOR_LEDGER__URL`` itself.
    """
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("X402_AGGREGATOR_LEDGER__URL", url)
    monkeypatch.setenv("X402_AGGREGATOR_LEDGER__PUBLIC_RPCS", "false")
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class Running:
    """An aggregator served by uvicorn, with a client pointed at it."""

    server: LiveServer
    engine: Aggregator
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.server.url

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.client.post(path, json=body)


@pytest.fixture
def fakes() -> Iterator[FakeFactory]:
    """Start fake facilitators on free ports; all are stopped after the test."""
    started: list[FakeFacilitator] = []

    def make(name: str = "fake", **kwargs: Any) -> FakeFacilitator:
        fake = FakeFacilitator(name, **kwargs).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


def upstream_entry(
    target: FakeFacilitator | str, priority: int, **overrides: Any
) -> dict[str, Any]:
    name, url = (
        (target.name, target.url) if isinstance(target, FakeFacilitator) else target.split("=", 1)
    )
    entry = {
        "name": name,
        "url": url,
        "priority": priority,
        "timeout_s": 1.0,
        "settle_timeout_s": 1.0,
        "connect_timeout_s": 0.5,
    }
    entry.update(overrides)
    return entry


AggregatorFactory = Callable[..., Running]


@pytest.fixture
def aggregator() -> Iterator[AggregatorFactory]:
    """Serve an aggregator over upstreams (fakes, "name=url" or entries), in priority order."""
    running: list[Running] = []

    def make(*upstreams: FakeFacilitator | str | dict[str, Any], **sections: Any) -> Running:
        entries = [
            u if isinstance(u, dict) else upstream_entry(u, priority)
            for priority, u in enumerate(upstreams)
        ]
        health = {"startup_wait_s": 2.0, "timeout_s": 1.0, **sections.pop("health", {})}
        config = load_config({"upstreams": entries, "health": health, **sections})
        engine = Aggregator(config)
        server = LiveServer(create_app(aggregator=engine)).start()
        client = httpx.Client(base_url=server.url, timeout=10.0)
        running.append(Running(server, engine, client))
        return running[-1]

    yield make
    for item in running:
        item.client.close()
        item.server.stop()
