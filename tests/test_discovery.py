"""GET /discovery/resources: the upstreams' Bazaar catalogues merged, over real sockets."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from x402.extensions.bazaar import ListDiscoveryResourcesParams, with_bazaar
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync

from x402_aggregator.config import DiscoveryConfig, UpstreamConfig
from x402_aggregator.discovery import (
    Discovery,
    item_key,
    merge_catalogues,
    parse_query,
    updated_at,
)
from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.transport import (
    Handler,
    HandlerTransport,
    UpstreamRequest,
    UpstreamResponse,
)
from x402_aggregator.upstream import Upstream

from .conftest import AggregatorFactory, FakeFactory, Running, upstream_entry
from .test_openapi import response_schema, validator

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


def item(
    resource: str,
    updated: str = "2026-01-01T00:00:00Z",
    *,
    kind: str = "http",
    network: str = "eip155:84532",
    scheme: str = "exact",
    pay_to: str = PAY_TO,
    **extra: Any,
) -> dict[str, Any]:
    option = {"scheme": scheme, "network": network, "amount": "1000", "asset": USDC}
    return {
        "resource": resource,
        "type": kind,
        "x402Version": 2,
        "accepts": [{**option, "payTo": pay_to, "maxTimeoutSeconds": 60}],
        "lastUpdated": updated,
        **extra,
    }


def catalogue(agg: Running, **params: Any) -> dict[str, Any]:
    response = agg.client.get("/discovery/resources", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def resources(body: dict[str, Any]) -> list[str]:
    return [entry["resource"] for entry in body["items"]]


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_overlapping_catalogues_merge_newest_wins(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """One item per resource: the newest lastUpdated wins and accepts lists are merged."""
    old = item("https://a.example/weather", "2026-01-01T00:00:00Z", metadata={"v": "old"})
    new = item(
        "https://a.example/weather", "2026-03-01T00:00:00Z", network="eip155:8453", metadata={}
    )
    same = item("https://b.example/news")
    primary = fakes("primary", discovery=[old, same, item("https://c.example/only-primary")])
    backup = fakes("backup", discovery=[new, same, item("https://d.example/only-backup")])
    agg = aggregator(primary, backup)

    body = catalogue(agg)

    assert body["x402Version"] == 2
    assert body["pagination"] == {"limit": 20, "offset": 0, "total": 4}
    assert resources(body) == sorted(resources(body))
    merged = {entry["resource"]: entry for entry in body["items"]}
    weather = merged["https://a.example/weather"]
    assert (weather["lastUpdated"], weather["metadata"]) == ("2026-03-01T00:00:00Z", {})
    assert [o["network"] for o in weather["accepts"]] == ["eip155:8453", "eip155:84532"]
    assert merged["https://b.example/news"]["accepts"] == same["accepts"]  # no duplicate option


def test_pages_are_complete_and_stable(fakes: FakeFactory, aggregator: AggregatorFactory) -> None:
    """Walking the pages yields every item once; upstream catalogues are read in pages of 100."""
    big = fakes("big", discovery=[item(f"https://x.example/r{i:03}") for i in range(250)])
    small = fakes("small", discovery=[item(f"https://x.example/r{i:03}") for i in range(240, 260)])
    agg = aggregator(big, small)

    seen: list[str] = []
    for offset in range(0, 270, 7):
        body = catalogue(agg, limit=7, offset=offset)
        assert body["pagination"] == {"limit": 7, "offset": offset, "total": 260}
        seen += resources(body)

    assert seen == [f"https://x.example/r{i:03}" for i in range(260)]
    assert big.discovery_calls == 3  # offsets 0, 100, 200: then the total is reached
    assert catalogue(agg, limit=7, offset=0) == catalogue(agg, limit=7, offset=0)
    assert catalogue(agg, offset=1000)["items"] == []


def test_upstreams_without_discovery_are_skipped_and_left_alone(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A 404 or a garbage answer is remembered as "no discovery"; the others are still served."""
    missing = fakes("missing")  # 404, like most facilitators
    garbage = fakes("garbage", discovery=[item("https://g.example/never-seen")])
    garbage.set("discovery", Mode.GARBAGE)
    good = fakes("good", discovery=[item("https://ok.example/a")])
    agg = aggregator(missing, garbage, good, discovery={"cache_ttl_s": 0.2})

    for _ in range(4):
        assert resources(catalogue(agg)) == ["https://ok.example/a"]
        time.sleep(0.25)
    wait_for(lambda: good.discovery_calls >= 3)

    assert (missing.discovery_calls, garbage.discovery_calls) == (1, 1)


def test_no_upstream_with_discovery_is_an_empty_catalogue(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Without any upstream catalogue the answer is 200 and empty, which SDK clients can read."""
    agg = aggregator(fakes("primary"), fakes("backup"))

    body = catalogue(agg, type="http")

    assert body == {
        "x402Version": 2,
        "items": [],
        "pagination": {"limit": 20, "offset": 0, "total": 0},
    }


def test_a_hung_upstream_never_makes_the_endpoint_slow(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """The first request waits at most first_fill_wait_s; later ones are answered from cache."""
    hung = fakes("hung", discovery=[item("https://h.example/late")])
    hung.set("discovery", Mode.HANG)
    good = fakes("good", discovery=[item("https://ok.example/a")])
    agg = aggregator(hung, good, discovery={"cache_ttl_s": 0.3, "first_fill_wait_s": 0.4})

    started = time.monotonic()
    first = catalogue(agg)
    assert time.monotonic() - started < 0.9  # not the upstream's 1 s timeout
    assert resources(first) == ["https://ok.example/a"]

    slowest, deadline = 0.0, time.monotonic() + 5.0
    while hung.discovery_calls < 2:  # until the hung upstream has been retried behind callers
        assert time.monotonic() < deadline
        started = time.monotonic()
        assert resources(catalogue(agg)) == ["https://ok.example/a"]
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    assert slowest < 0.3


def test_filters(fakes: FakeFactory, aggregator: AggregatorFactory) -> None:
    """type, payTo, scheme, network and extensions filter; accepts filters match one option."""
    other = "So11111111111111111111111111111111111111112"
    items = [
        item("https://a.example/base", network="eip155:8453"),
        item("https://a.example/sepolia", extensions={"bazaar": {"info": {}}}),
        item("https://a.example/upto", scheme="upto", pay_to=other),
        item("mcp://a.example/tools", kind="mcp"),
    ]
    agg = aggregator(fakes("primary", discovery=items))

    assert resources(catalogue(agg, type="mcp")) == ["mcp://a.example/tools"]
    assert resources(catalogue(agg, network="eip155:8453")) == ["https://a.example/base"]
    assert resources(catalogue(agg, scheme="upto")) == ["https://a.example/upto"]
    assert resources(catalogue(agg, payTo=other)) == ["https://a.example/upto"]
    assert len(catalogue(agg, payTo=PAY_TO.lower())["items"]) == 3  # EVM: any case
    assert resources(catalogue(agg, extensions="bazaar")) == ["https://a.example/sepolia"]
    assert catalogue(agg, scheme="upto", payTo=PAY_TO)["pagination"]["total"] == 0
    filtered = catalogue(agg, type="http", scheme="exact", limit=1, offset=1)
    assert filtered["pagination"] == {"limit": 1, "offset": 1, "total": 2}
    assert resources(filtered) == ["https://a.example/sepolia"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "limit must be an integer from 1 to 100"),
        ({"limit": "101"}, "limit must be an integer from 1 to 100"),
        ({"limit": "ten"}, "limit must be an integer from 1 to 100"),
        ({"limit": "-5"}, "limit must be an integer from 1 to 100"),
        ({"offset": "-1"}, "offset must be an integer of at least 0"),
        ({"offset": "1.5"}, "offset must be an integer of at least 0"),
    ],
)
def test_bad_parameters_are_400(
    fakes: FakeFactory, aggregator: AggregatorFactory, params: dict[str, str], message: str
) -> None:
    """limit outside 1-100 or a negative or non-integer offset is a 400 saying which."""
    agg = aggregator(fakes("primary", discovery=[item("https://a.example/x")]))

    response = agg.client.get("/discovery/resources", params=params)

    assert response.status_code == 400
    assert response.json() == {"error": message}


def test_cache_serves_within_ttl_and_refreshes_after(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Repeated calls cost no upstream call within the TTL; after it one refresh runs behind."""
    fake = fakes("primary", discovery=[item("https://a.example/one")])
    agg = aggregator(fake, discovery={"cache_ttl_s": 1.0})

    for _ in range(5):
        assert resources(catalogue(agg)) == ["https://a.example/one"]
    fake.set_discovery([item("https://a.example/one"), item("https://a.example/two")])
    assert resources(catalogue(agg)) == ["https://a.example/one"]
    assert fake.discovery_calls == 1

    time.sleep(1.1)
    fake.set("discovery", Mode.SLOW, delay_s=0.3)
    with ThreadPoolExecutor(8) as pool:  # concurrent callers after the TTL: one refresh
        stale = list(pool.map(lambda _: resources(catalogue(agg)), range(8)))
    assert stale == [["https://a.example/one"]] * 8
    wait_for(lambda: len(catalogue(agg)["items"]) == 2)
    assert fake.discovery_calls == 2


def test_upstream_credentials_are_sent(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catalogue requests carry the upstream's auth and static headers, like every other call."""
    monkeypatch.setenv("DISCOVERY_TEST_TOKEN", "s3cret")
    fake = fakes("primary", discovery=[item("https://a.example/x")])
    entry = upstream_entry(
        fake, 0, auth={"type": "bearer", "token_env": "DISCOVERY_TEST_TOKEN"}, headers={"X-T": "1"}
    )
    agg = aggregator(entry)

    catalogue(agg)

    sent = [r.headers for r in fake.received if r.op == "discovery"]
    assert len(sent) == 1
    assert (sent[0]["authorization"], sent[0]["x-t"]) == ("Bearer s3cret", "1")


def test_disabled_discovery_is_404(fakes: FakeFactory, aggregator: AggregatorFactory) -> None:
    """With discovery.enabled false the route answers 404 and no upstream is asked."""
    fake = fakes("primary", discovery=[item("https://a.example/x")])
    agg = aggregator(fake, discovery={"enabled": False})

    response = agg.client.get("/discovery/resources")

    assert response.status_code == 404
    assert "discovery" in response.json()["error"]
    assert fake.discovery_calls == 0


def test_the_sdk_bazaar_client_reads_the_aggregator(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """x402's own with_bazaar(...).list_resources works against the aggregator unchanged."""
    items = [item(f"https://a.example/r{i}", serviceName="Example") for i in range(3)]
    agg = aggregator(fakes("primary", discovery=[*items, item("mcp://m.example", kind="mcp")]))
    # The SDK annotates the async client, but list_resources calls the sync one's _get_client.
    sync = HTTPFacilitatorClientSync(FacilitatorConfig(url=agg.url))
    client = with_bazaar(sync)  # type: ignore[arg-type]

    try:
        page = client.extensions.bazaar.list_resources(
            ListDiscoveryResourcesParams(type="http", network="eip155:84532", limit=2, offset=1)
        )
    finally:
        client.close()

    assert page.x402_version == 2
    assert (page.pagination.limit, page.pagination.offset, page.pagination.total) == (2, 1, 3)
    assert [r.resource for r in page.items] == ["https://a.example/r1", "https://a.example/r2"]
    assert page.items[0].service_name == "Example"
    assert page.items[0].accepts == items[1]["accepts"]


@pytest.mark.parametrize("params", [{"limit": 2}, {"limit": 0}, {"offset": "x"}])
def test_answers_match_the_documented_schema(
    fakes: FakeFactory, aggregator: AggregatorFactory, params: dict[str, Any]
) -> None:
    """A page with merged items, and a 400, validate against the OpenAPI document's schemas."""
    items = [item("https://a.example/x", metadata={"k": 1}), item("mcp://m", kind="mcp")]
    agg = aggregator(fakes("primary", discovery=items))
    spec = agg.client.get("/openapi.json").json()

    response = agg.client.get("/discovery/resources", params=params)

    name = response_schema(spec, "/discovery/resources", "get", response.status_code)
    errors = list(validator(spec, name).iter_errors(response.json()))
    assert not errors, [e.message for e in errors]


# --- in-process: pure functions and the transport seam --------------------------------------


def test_mcp_tools_on_one_server_stay_apart() -> None:
    """MCP items are keyed by URL and tool name, as the bazaar spec asks; HTTP ones by URL."""

    def tool(name: str) -> dict[str, Any]:
        return item("https://m.example/mcp", kind="mcp", extensions=_tool(name))

    merged = merge_catalogues([[tool("a"), tool("b")], [tool("a")]])

    assert [item_key(entry) for entry in merged] == [
        ("https://m.example/mcp", "a"),
        ("https://m.example/mcp", "b"),
    ]


def _tool(name: str) -> dict[str, Any]:
    return {"bazaar": {"info": {"input": {"type": "mcp", "tool": name}}}}


def test_last_updated_forms() -> None:
    """ISO 8601 (with or without zone), epoch seconds and epoch ms compare; junk is oldest."""
    assert updated_at({"lastUpdated": "2026-01-01T00:00:00Z"}) == 1767225600.0
    assert updated_at({"lastUpdated": "2026-01-01T00:00:00"}) == 1767225600.0
    assert updated_at({"lastUpdated": 1767225600}) == 1767225600.0
    assert updated_at({"lastUpdated": 1767225600000}) == 1767225600.0
    assert updated_at({"lastUpdated": "yesterday"}) == float("-inf")
    assert updated_at({}) == float("-inf")


def test_query_defaults() -> None:
    """No parameters: the spec's defaults (limit 20, offset 0), no filters."""
    query = parse_query({})

    assert (query.limit, query.offset, query.type, query.extensions) == (20, 0, None, ())


async def test_redirects_are_not_followed_and_mean_no_discovery() -> None:
    """A 3xx is not followed: the upstream counts as one without discovery, not asked again."""
    sent: list[UpstreamRequest] = []

    async def handler(request: UpstreamRequest) -> UpstreamResponse:
        sent.append(request)
        return UpstreamResponse(302, {"Location": "https://elsewhere.example/"}, b"")

    discovery = _discovery(handler)

    first = await discovery.page(parse_query({}))
    await asyncio.sleep(0.02)
    second = await discovery.page(parse_query({}))
    await discovery.aclose()

    assert first["items"] == second["items"] == []
    assert [r.url for r in sent] == ["http://127.0.0.1:9/discovery/resources?limit=100&offset=0"]


async def test_a_failed_refresh_keeps_the_last_catalogue() -> None:
    """A 5xx (or a timeout) keeps what the upstream served last instead of emptying it."""
    page = orjson.dumps({"items": [item("https://a.example/x")]})
    answers = [UpstreamResponse(200, {}, page), UpstreamResponse(503, {}, b"busy")]

    async def handler(request: UpstreamRequest) -> UpstreamResponse:
        return answers.pop(0)

    discovery = _discovery(handler)

    first = await discovery.page(parse_query({}))
    await asyncio.sleep(0.02)
    await discovery.page(parse_query({}))  # served from cache; starts the refresh that fails
    await asyncio.sleep(0.02)
    after = await discovery.page(parse_query({}))
    await discovery.aclose()

    assert answers == []
    assert resources(first) == resources(after) == ["https://a.example/x"]


def _discovery(handler: Handler) -> Discovery:
    transport = HandlerTransport(handler)
    config = UpstreamConfig.model_validate({"name": "u", "url": "http://127.0.0.1:9"})
    upstream = Upstream(config, transport)
    return Discovery([upstream], transport, DiscoveryConfig(cache_ttl_s=0.01))
