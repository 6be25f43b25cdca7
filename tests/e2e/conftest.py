"""One real x402 network for the session: anvil + USDC, a Solana VM, the Python and TypeScript
facilitators (both settle EVM and Solana payments, each with its own signer and fee payer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from x402_aggregator.aggregator import Aggregator
from x402_aggregator.config import load_config
from x402_aggregator.localnet.live import LiveServer
from x402_aggregator.localnet.network import TestBed
from x402_aggregator.localnet.payer import Payment
from x402_aggregator.server import create_app


@pytest.fixture(scope="session")
def testbed() -> Iterator[TestBed]:
    bed = TestBed.start(lifetime_s=1200, svm=True)
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


#: The frozen upstream's budget: its settle turns ambiguous after this long.
FROZEN_TIMEOUT_S = 3.0
ADMIN_TOKEN_ENV = "X402_TEST_ADMIN_TOKEN"
ADMIN_TOKEN = "settlement-chain-test-token"


@dataclass
class Served:
    """An aggregator in front of the test bed, and a client for it."""

    server: LiveServer
    client: httpx.Client

    def settle(self, payment: Payment) -> httpx.Response:
        return self.client.post("/settle", json=payment.body)

    def record(self, response: httpx.Response) -> dict[str, Any]:
        """The ledger record behind a settle answer (``GET /settlements/{id}``)."""
        settlement_id = response.headers["X402-Settlement-Id"]
        found = self.client.get(f"/settlements/{quote(settlement_id, safe='')}")
        assert found.status_code == 200, found.text
        record: dict[str, Any] = found.json()
        return record

    def drain(self, name: str) -> None:
        """Take an upstream out of rotation through the admin API."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        drained = self.client.post(f"/admin/upstreams/{name}/drain", headers=headers)
        assert drained.status_code == 200, drained.text

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


Serve = Callable[..., Served]


@pytest.fixture
def serve(testbed: TestBed, monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """Like ``through``, plus a chain RPC when ``rpc`` and short timeouts for ``slow``.

    The ledger is the test's own (``private_ledger``), shared by every aggregator the test
    starts: a second one with other settings takes over the first one's records.
    """
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
    started: list[Served] = []

    def make(*order: str, rpc: bool, slow: str | None = None) -> Served:
        config = testbed.aggregator_config(*order, rpc=rpc)
        for entry in config["upstreams"]:
            if entry["name"] == slow:
                entry.update(timeout_s=FROZEN_TIMEOUT_S, settle_timeout_s=FROZEN_TIMEOUT_S)
        # A long interval keeps the background resolver out of the way (it runs once when the
        # ledger opens, with nothing to do): the tests drive resolution with their own retries.
        config["ledger"] = {**config["ledger"], "resolve_interval_s": 600}
        config["admin"] = {"token_env": ADMIN_TOKEN_ENV}
        server = LiveServer(create_app(aggregator=Aggregator(load_config(config)))).start()
        served = Served(server, httpx.Client(base_url=server.url, timeout=120))
        started.append(served)
        return served

    yield make
    for served in started:
        served.stop()


def attempts(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The record's attempts as (kind, upstream, outcome), oldest first."""
    return [(a["kind"], a["upstream"], a["outcome"]) for a in record["attempts"]]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what}: not after {timeout_s:g} s"
        time.sleep(0.05)
    return time.monotonic() - started
