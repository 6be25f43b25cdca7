"""Prometheus metrics, scraped over HTTP, in one process and across uvicorn workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.localnet.live import free_port
from x402_aggregator.localnet.payloads import v2_body

from .conftest import AggregatorFactory, FakeFactory


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_attempts_latency_and_health(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """After traffic through two upstreams, /metrics shows what clients saw and each attempt."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup, routing={"hedge": False})
    for _ in range(3):
        agg.post("/verify", v2_body())
    primary.set("verify", Mode.HTTP500)
    agg.post("/verify", v2_body())
    agg.post("/settle", v2_body())
    primary.set("settle", Mode.HANG)
    agg.post("/settle", v2_body())

    response = agg.client.get("/metrics")
    text = response.text

    assert response.headers["content-type"].startswith("text/plain")
    total = "x402_aggregator_requests_total"
    assert value(text, total, operation="verify", outcome="valid") >= 4
    assert value(text, total, operation="settle", outcome="settled") >= 1
    assert value(text, total, operation="settle", outcome="unknown") >= 1
    attempts = "x402_aggregator_upstream_requests_total"
    assert value(text, attempts, upstream="primary", operation="verify", outcome="ok") >= 3
    assert value(text, attempts, upstream="primary", operation="verify", outcome="retryable") >= 1
    assert value(text, attempts, upstream="backup", operation="verify", outcome="ok") >= 1
    assert value(text, attempts, upstream="primary", operation="settle", outcome="ambiguous") >= 1
    count = "x402_aggregator_upstream_latency_seconds_count"
    assert value(text, count, upstream="primary", operation="verify") >= 4
    assert value(text, "x402_aggregator_failovers_total", operation="verify") >= 1
    assert value(text, "x402_aggregator_settlements_total", result="unknown") >= 1
    assert value(text, "x402_aggregator_ambiguous_settlements") == 1
    assert value(text, "x402_aggregator_upstream_up", upstream="backup") == 1
    assert value(text, "x402_aggregator_upstream_state", upstream="backup", state="healthy") == 1
    # No payment data ever becomes a label.
    assert "0x" not in "".join(f"{k}{v}" for (_, labels) in samples(text) for k, v in labels)


def test_counters_add_up_across_workers(tmp_path: Path, fakes: FakeFactory) -> None:
    """With two uvicorn workers, request counters on /metrics are the sum over both."""
    primary = fakes("primary")
    port = free_port()
    config = tmp_path / "agg.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\n"
        f"upstreams:\n  - {{name: primary, url: '{primary.url}'}}\n"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "x402_aggregator",
            "serve",
            "--config",
            str(config),
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.2)
        for _ in range(40):  # fresh connections spread over both workers
            httpx.post(f"{url}/verify", json=v2_body(), timeout=10)
        text = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert value(text, "x402_aggregator_requests_total", operation="verify", outcome="valid") == 40
    assert primary.calls["verify"] == 40
