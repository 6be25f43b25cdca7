"""Logs and alerts: what operators see when things happen, and what they never see."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.logs import JSONFormatter

from .conftest import AggregatorFactory, FakeFactory


class Webhook:
    """A real HTTP server on loopback (stdlib) that records the JSON events posted to it."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.events: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay_s)
                hook.events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook?token=s3cret"

    def start(self) -> Webhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def wait_for(self, event: str, timeout_s: float = 10, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for item in list(self.events):
                if item["event"] == event and all(item.get(k) == v for k, v in match.items()):
                    return item
            time.sleep(0.05)
        raise AssertionError(f"no {event} event; got {self.events}")


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    hook = Webhook().start()
    monkeypatch.setenv("ALERT_WEBHOOK", hook.url)
    yield hook
    hook.stop()


@pytest.fixture
def json_logs() -> Iterator[list[dict[str, Any]]]:
    """Capture the aggregator's log records as the JSON lines the JSON format would print."""
    lines: list[dict[str, Any]] = []
    formatter = JSONFormatter()

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    handler = Capture(level=logging.INFO)
    root = logging.getLogger("x402_aggregator")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lines
    root.removeHandler(handler)
    root.setLevel(previous)


def test_access_log_has_request_id_upstream_outcome_and_latency(
    fakes: FakeFactory, aggregator: AggregatorFactory, json_logs: list[dict[str, Any]]
) -> None:
    """Each answer is one JSON log line, and its request id reaches the upstream and the caller."""
    primary = fakes("primary")
    agg = aggregator(primary)
    body = v2_body()

    response = agg.client.post("/verify", json=body, headers={"X-Request-Id": "req-42"})

    access = [line for line in json_logs if line["logger"] == "x402_aggregator.access"]
    assert access[-1]["request_id"] == "req-42"
    assert access[-1]["upstream"] == "primary"
    assert access[-1]["outcome"] == "valid"
    assert access[-1]["latency_ms"] > 0
    assert response.headers["X-Request-Id"] == "req-42"
    assert primary.received[-1].headers["x-request-id"] == "req-42"
    signature = body["paymentPayload"]["payload"]["signature"]
    assert signature not in json.dumps(json_logs)


def test_a_missing_or_hostile_request_id_is_replaced(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Without a usable X-Request-Id the aggregator makes one; log injection is not passed on."""
    primary = fakes("primary")
    agg = aggregator(primary)

    plain = agg.post("/verify", v2_body())
    hostile = agg.client.post("/verify", json=v2_body(), headers={"X-Request-Id": "a b\tc"})

    assert len(plain.headers["X-Request-Id"]) == 16
    assert hostile.headers["X-Request-Id"] != "a b\tc"
    assert primary.received[-1].headers["x-request-id"] == hostile.headers["X-Request-Id"]


def test_state_changes_and_ambiguous_settles_reach_the_webhook(
    fakes: FakeFactory, aggregator: AggregatorFactory, webhook: Webhook
) -> None:
    """The webhook hears when an upstream goes out and when a settle's outcome is unknown."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(
        primary,
        backup,
        alerts={"webhook_url_env": "ALERT_WEBHOOK"},
        health={"interval_s": 0.3, "unknown_retry_s": 0.1, "unhealthy_threshold": 2},
    )
    primary.set("settle", Mode.HTTP500)
    agg.post("/settle", v2_body())
    primary.stop()

    ambiguous = webhook.wait_for("settlement_ambiguous")
    state = webhook.wait_for("upstream_state", to="unhealthy")

    assert ambiguous["upstream"] == "primary"
    assert ambiguous["network"] == "eip155:84532"
    assert state["upstream"] == "primary"
    assert "probes failed" in state["reason"]
    assert "s3cret" not in agg.client.get("/status").text


def test_a_slow_webhook_never_slows_requests(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alert delivery is bounded and off the request path, even when the webhook hangs."""
    hook = Webhook(delay_s=5).start()
    monkeypatch.setenv("ALERT_WEBHOOK", hook.url)
    try:
        primary = fakes("primary")
        agg = aggregator(primary, alerts={"webhook_url_env": "ALERT_WEBHOOK", "timeout_s": 0.5})
        primary.set("settle", Mode.HTTP500)

        started = time.monotonic()
        for _ in range(5):
            agg.post("/settle", v2_body())
        elapsed = time.monotonic() - started
    finally:
        hook.stop()

    assert elapsed < 1.0
