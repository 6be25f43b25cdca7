"""`x402-aggregator serve` as real processes: kill -9 mid-settle, two on PostgreSQL, SIGHUP."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from tests.postgres import PostgresServer
from x402_aggregator.localnet.fake_facilitator import FakeFacilitator, Mode
from x402_aggregator.localnet.live import free_port
from x402_aggregator.localnet.payloads import v2_body

from .conftest import FakeFactory

Serve = Callable[..., str]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start ``x402-aggregator serve`` processes over fakes; return each one's URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*upstreams: FakeFacilitator, name: str = "agg") -> str:
        port = free_port()
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": port},
            "upstreams": [
                {
                    "name": fake.name,
                    "url": fake.url,
                    "priority": priority,
                    "timeout_s": 2,
                    "settle_timeout_s": 20,
                }
                for priority, fake in enumerate(upstreams)
            ],
            "health": {"timeout_s": 2, "startup_wait_s": 2},
            "ledger": {"resolve_interval_s": 0.2},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        with (tmp_path / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "x402_aggregator", "serve", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"{name} did not become healthy")

    start.processes = processes  # type: ignore[attr-defined]
    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_9_between_sent_and_answered_loses_nothing(fakes: FakeFactory, serve: Serve) -> None:
    """The aggregator dies while the primary holds the settle; the next process finishes it."""
    primary, backup = fakes("primary"), fakes("backup")
    primary.set("settle", Mode.HANG)
    body = v2_body()
    first = serve(primary, backup, name="first")
    process: subprocess.Popen[bytes] = serve.processes[0]  # type: ignore[attr-defined]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        lost = pool.submit(httpx.post, f"{first}/settle", json=body, timeout=30)
        wait_until(lambda: primary.calls["settle"] == 1)
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(httpx.TransportError):
            lost.result(timeout=10)
    primary.set("settle", Mode.OK)  # the primary comes back: it can say what happened

    second = serve(primary, backup, name="second")

    def settled() -> list[dict[str, Any]]:
        found = httpx.get(f"{second}/settlements", params={"state": "settled"}, timeout=5)
        records: list[dict[str, Any]] = found.json()["settlements"]
        return records

    wait_until(lambda: bool(settled()))  # resolved at start-up, before anyone asks
    retry = httpx.post(f"{second}/settle", json=body, timeout=30).json()
    again = httpx.post(f"{second}/settle", json=body, timeout=30).json()
    [listed] = settled()
    record = httpx.get(f"{second}/settlements/{quote(listed['id'], safe='')}", timeout=5).json()

    assert record["note"] is None
    assert [(a["upstream"], a["outcome"]) for a in record["attempts"]] == [
        ("primary", None),  # sent by the killed process, never answered
        ("primary", "ok"),
    ]
    assert retry["success"] is True  # the client that never got an answer gets the truth
    assert retry["transaction"] == record["transaction"]
    assert again["errorReason"] == "duplicate_settlement"
    assert backup.calls["settle"] == 0  # never sent elsewhere on a guess
    assert primary.calls["settle"] == 2  # the lost attempt, then the resolver's re-ask


def test_two_instances_on_postgresql_settle_a_payment_once(
    fakes: FakeFactory,
    serve: Serve,
    postgres: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same payment sent to two processes at once: one upstream settle, one success."""
    monkeypatch.setenv("X402_AGGREGATOR_LEDGER__URL", postgres.new_database())
    primary = fakes("primary")
    primary.set("settle", Mode.SLOW, delay_s=0.5)
    urls = [serve(primary, name="a"), serve(primary, name="b")]
    body = v2_body()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(
                lambda i: httpx.post(f"{urls[i % 2]}/settle", json=body, timeout=30).json(),
                range(10),
            )
        )

    successes = [a for a in answers if a["success"]]
    duplicates = [a for a in answers if a.get("errorReason") == "duplicate_settlement"]
    assert primary.calls["settle"] == 1
    assert len(successes) == 1
    assert len(duplicates) == 9
    assert {d["transaction"] for d in duplicates} == {successes[0]["transaction"]}


def test_sighup_reloads_the_configuration_and_refuses_a_bad_one(
    fakes: FakeFactory, serve: Serve, tmp_path: Path
) -> None:
    """serve re-reads its file on SIGHUP: in-flight requests finish, a broken file is refused."""
    primary, backup = fakes("primary"), fakes("backup")
    url = serve(primary, name="reload")
    process: subprocess.Popen[bytes] = serve.processes[0]  # type: ignore[attr-defined]
    path = tmp_path / "reload.yaml"
    config = yaml.safe_load(path.read_text())

    def upstreams() -> list[str]:
        status = httpx.get(f"{url}/status", timeout=5).json()
        return [u["name"] for u in status["upstreams"]]

    primary.set("verify", Mode.SLOW, delay_s=1.0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(httpx.post, f"{url}/verify", json=v2_body(), timeout=30)
        wait_until(lambda: primary.calls["verify"] == 1)
        config["upstreams"][0].update(name="backup", url=backup.url)
        path.write_text(yaml.safe_dump(config))
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: upstreams() == ["backup"])
        finished = in_flight.result(timeout=10)
    after = httpx.post(f"{url}/verify", json=v2_body(), timeout=10)

    path.write_text("upstreams: [{name: broken, url: not-a-url}]\n")
    process.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    still = httpx.post(f"{url}/verify", json=v2_body(), timeout=10)

    assert finished.json()["isValid"] is True  # started on the old engine, finished there
    assert finished.headers["X-Aggregator-Upstream"] == "primary"
    assert after.headers["X-Aggregator-Upstream"] == "backup"
    assert process.poll() is None
    assert upstreams() == ["backup"]  # the broken file changed nothing
    assert still.headers["X-Aggregator-Upstream"] == "backup"
    log = (tmp_path / "reload.log").read_text()
    assert "configuration reloaded: upstreams backup" in log
    assert "configuration reload refused" in log
    assert "Traceback" not in log
