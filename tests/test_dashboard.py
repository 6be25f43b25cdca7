"""The live dashboard in headless Chromium: cards, percentiles, chart, settlements, an outage."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page, Playwright, Request, expect, sync_playwright

from x402_aggregator.localnet.browser import CHROMIUM, CHROMIUM_ARGS
from x402_aggregator.localnet.payloads import v2_body

from .conftest import AggregatorFactory, FakeFactory, Running

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: The page refreshes every 2 s and probes run every 0.5 s: each wait is far shorter in practice.
WAIT_MS = 10_000
#: Chart pixels that are clearly coloured (series lines and dots), not grey axes or labels.
CHART_PIXELS = """() => {
  const canvas = document.querySelector("#chart");
  if (!canvas || !canvas.width || !canvas.height) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
    if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 80) coloured += 1;
  }
  return coloured;
}"""
NUMBER = re.compile(r"^\d+(\.\d+)?$")
HEALTH = {"interval_s": 0.5, "unknown_retry_s": 0.2, "unhealthy_threshold": 2}


def start_browser() -> tuple[Playwright, Browser]:
    """Start Playwright and Debian's Chromium; fail (never skip) if Chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (CI does)")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=WAIT_MS
        )
    except BaseException:
        playwright.stop()
        raise
    return playwright, browser


def card(page: Page, name: str) -> Locator:
    """The card of upstream ``name``."""
    return page.locator(f'article[data-upstream="{name}"]')


def send_payments(agg: Running, count: int) -> None:
    """Verify and settle ``count`` payments, each answered by some upstream."""
    for _ in range(count):
        body = v2_body()
        assert agg.post("/verify", body).status_code == 200
        assert agg.post("/settle", body).status_code == 200


def test_dashboard_shows_upstreams_chart_settlements_and_an_outage_live(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """The page renders both upstreams, percentiles, the chart and settlements, then the outage."""
    primary = fakes("primary")
    agg = aggregator(primary, fakes("backup"), health=HEALTH)
    send_payments(agg, 4)
    requested: list[str] = []
    playwright, browser = start_browser()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS)

        def record(request: Request) -> None:
            requested.append(request.url)

        page.on("request", record)
        page.goto(agg.url + "/", timeout=WAIT_MS)

        for name in ("primary", "backup"):
            state = card(page, name).locator(".state")
            expect(state).to_have_attribute("data-state", "healthy", timeout=WAIT_MS)
        for cell in ("verify-p50", "verify-p95", "verify-p99", "settle-p50", "settle-p99"):
            expect(card(page, "primary").locator(f'[data-pct="{cell}"]')).to_have_text(NUMBER)
        rows = page.locator("#settlements tbody tr")
        expect(rows).to_have_count(4)
        expect(rows.first.locator(".result")).to_have_attribute("data-result", "settled")
        page.wait_for_function(f"({CHART_PIXELS})() > 20", timeout=WAIT_MS)
        page.evaluate("window.__sameDocument = true")

        primary.stop()
        send_payments(agg, 3)  # answered by the backup
        expect(card(page, "primary").locator(".state")).not_to_have_attribute(
            "data-state", "healthy", timeout=WAIT_MS
        )
        shown = card(page, "primary").locator(".state").get_attribute("data-state")
        assert shown in ("unhealthy", "ejected")
        expect(card(page, "backup").locator(".state")).to_have_attribute("data-state", "healthy")
        expect(rows).to_have_count(7)
        assert page.evaluate("window.__sameDocument === true"), "the page reloaded"

        agg.server.stop()
        expect(page.locator("#banner")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#banner")).to_contain_text("Cannot reach the aggregator")

        assert any(urlsplit(url).path == "/status" for url in requested)
        foreign = [url for url in requested if urlsplit(url).hostname not in LOOPBACK]
        assert foreign == [], f"the page fetched from non-loopback origins: {foreign}"
    finally:
        browser.close()
        playwright.stop()


def test_a_missing_chromium_fails_the_test_instead_of_skipping_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without /usr/bin/chromium the dashboard test fails with a message saying what to install."""
    monkeypatch.setattr(f"{__name__}.CHROMIUM", Path("/nonexistent/chromium"))
    with pytest.raises(pytest.fail.Exception, match="install Debian's chromium"):
        start_browser()
