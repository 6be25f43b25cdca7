"""API keys and per-key rate limits on /verify, /settle and /supported, over real sockets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from x402.http import HTTPFacilitatorClient

from x402_aggregator.access import AccessControl, TokenBucket, parse_keys
from x402_aggregator.config import load_config
from x402_aggregator.errors import ConfigError
from x402_aggregator.localnet.fake_facilitator import FakeFacilitator
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.secrets import check_secrets
from x402_aggregator.server import create_app

from .conftest import AggregatorFactory, FakeFactory, Running, upstream_entry
from .test_openapi import response_schema, validator
from .test_sdk_client import sdk_objects

VARIABLE = "X402_TEST_KEYS"
ALICE_KEY = "alice-secret-0123456789abcdef"
BOB_KEY = "bob-secret-fedcba9876543210"
WRONG_KEY = "mallory-guess-5555555555555555"
KEYS = f"alice:{ALICE_KEY}, bob:{BOB_KEY}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def guarded(
    aggregator: AggregatorFactory,
    upstream: FakeFacilitator,
    monkeypatch: pytest.MonkeyPatch,
    **server: Any,
) -> Running:
    monkeypatch.setenv(VARIABLE, KEYS)
    return aggregator(upstream, server={"api_keys_env": VARIABLE, **server})


def payments_seen(fake: FakeFacilitator) -> int:
    return fake.calls["verify"] + fake.calls["settle"]


@pytest.mark.parametrize("path", ["/verify", "/settle"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer(WRONG_KEY),
        {"X-API-Key": WRONG_KEY},
        {"Authorization": f"Basic {ALICE_KEY}"},  # only Bearer carries a key
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong-bearer", "wrong-header", "basic", "empty-bearer"],
)
def test_a_call_without_a_known_key_is_refused_and_never_forwarded(
    fakes: FakeFactory,
    aggregator: AggregatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    headers: dict[str, str],
) -> None:
    """401 with a Bearer challenge and an x402 body; the upstream sees nothing."""
    primary = fakes("primary")
    agg = guarded(aggregator, primary, monkeypatch)

    response = agg.client.post(path, json=v2_body(), headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-aggregator-upstream"] == "none"
    body = response.json()
    if path == "/verify":
        assert body["isValid"] is False
        assert body["invalidReason"] == "unauthorized"
        assert body["invalidMessage"]
    else:
        assert body["success"] is False
        assert body["errorReason"] == "unauthorized"
        assert (body["transaction"], body["network"]) == ("", "")
    assert payments_seen(primary) == 0


def test_supported_needs_a_key(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/supported (which resource servers read at start) is guarded too."""
    agg = guarded(aggregator, fakes("primary"), monkeypatch)

    refused = agg.client.get("/supported")
    wrong = agg.client.get("/supported", headers={"X-API-Key": WRONG_KEY})
    allowed = agg.client.get("/supported", headers=bearer(ALICE_KEY))

    assert refused.status_code == wrong.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "API key" in refused.json()["error"]
    assert allowed.status_code == 200
    assert allowed.json()["kinds"]


@pytest.mark.parametrize(
    "headers",
    [bearer(ALICE_KEY), {"X-API-Key": ALICE_KEY}, {"authorization": f"bearer  {ALICE_KEY}"}],
    ids=["bearer", "x-api-key", "lowercase-bearer"],
)
def test_a_known_key_passes_and_is_not_forwarded(
    fakes: FakeFactory,
    aggregator: AggregatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
) -> None:
    """Either header works; the upstream gets its own auth, never the caller's key."""
    monkeypatch.setenv("PRIMARY_TOKEN", "upstream-token")
    primary = fakes("primary")
    monkeypatch.setenv(VARIABLE, KEYS)
    agg = aggregator(
        upstream_entry(primary, 0, auth={"type": "bearer", "token_env": "PRIMARY_TOKEN"}),
        server={"api_keys_env": VARIABLE},
    )

    verified = agg.client.post("/verify", json=v2_body(), headers=headers)
    settled = agg.client.post("/settle", json=v2_body(), headers=headers)

    assert verified.status_code == 200, verified.text
    assert verified.json()["isValid"] is True
    assert settled.status_code == 200, settled.text
    assert settled.json()["success"] is True
    forwarded = [r for r in primary.received if r.op in ("verify", "settle")]
    assert len(forwarded) == 2
    for request in forwarded:
        assert request.headers["authorization"] == "Bearer upstream-token"
        assert "x-api-key" not in request.headers
        assert ALICE_KEY not in repr(request.headers)


def test_each_key_has_its_own_bucket(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice over her rate gets 429 with Retry-After; Bob is not affected; nothing forwarded."""
    primary = fakes("primary")
    agg = guarded(aggregator, primary, monkeypatch, rate_limit_per_s=0.1, rate_limit_burst=2)

    alice = [agg.client.post("/verify", json=v2_body(), headers=bearer(ALICE_KEY)) for _ in "abc"]
    limited_settle = agg.client.post("/settle", json=v2_body(), headers=bearer(ALICE_KEY))
    limited_supported = agg.client.get("/supported", headers=bearer(ALICE_KEY))
    bob = agg.client.post("/verify", json=v2_body(), headers={"X-API-Key": BOB_KEY})

    assert [r.status_code for r in alice] == [200, 200, 429]
    limited = alice[2]
    assert limited.json()["isValid"] is False
    assert limited.json()["invalidReason"] == "rate_limited"
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 10  # one token takes 10 s at 0.1/s
    assert limited_settle.status_code == 429
    assert limited_settle.json()["errorReason"] == "rate_limited"
    assert int(limited_settle.headers["retry-after"]) >= 1
    assert limited_supported.status_code == 429
    assert limited_supported.json()["reason"] == "rate_limited"
    assert bob.status_code == 200
    assert primary.calls["verify"] == 3  # alice twice, bob once
    assert primary.calls["settle"] == 0


def test_the_bucket_refills_over_real_time(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 5/s a refused key is served again 0.2 s later."""
    agg = guarded(aggregator, fakes("primary"), monkeypatch, rate_limit_per_s=5, rate_limit_burst=1)

    first = agg.client.post("/verify", json=v2_body(), headers=bearer(ALICE_KEY))
    second = agg.client.post("/verify", json=v2_body(), headers=bearer(ALICE_KEY))
    time.sleep(0.3)
    third = agg.client.post("/verify", json=v2_body(), headers=bearer(ALICE_KEY))

    assert (first.status_code, second.status_code, third.status_code) == (200, 429, 200)
    assert second.headers["retry-after"] == "1"


def test_keys_never_appear_in_status_bodies_metrics_or_logs(
    fakes: FakeFactory,
    aggregator: AggregatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logs carry the key's name; no key (right or wrong) is written anywhere."""
    caplog.set_level(logging.DEBUG)
    agg = guarded(
        aggregator, fakes("primary"), monkeypatch, rate_limit_per_s=0.1, rate_limit_burst=1
    )

    answers = [
        agg.client.post("/verify", json=v2_body(), headers=bearer(ALICE_KEY)),
        agg.client.post("/settle", json=v2_body(), headers=bearer(BOB_KEY)),
        agg.client.post("/verify", json=v2_body(), headers=bearer(ALICE_KEY)),  # 429
        agg.client.post("/verify", json=v2_body(), headers=bearer(WRONG_KEY)),  # 401
        agg.client.get("/supported", headers={"X-API-Key": WRONG_KEY}),  # 401
    ]
    pages = [agg.client.get(path) for path in ("/status", "/metrics", "/settlements")]

    assert [a.status_code for a in answers] == [200, 200, 429, 401, 401]
    logged = [(r.getMessage(), repr(getattr(r, "fields", None))) for r in caplog.records]
    written = [str(logged), *(r.text for r in answers + pages), *(str(r.headers) for r in answers)]
    for key in (ALICE_KEY, BOB_KEY, WRONG_KEY):
        assert not any(key in text for text in written), key
    access = [getattr(r, "fields", {}) for r in caplog.records if r.name.endswith(".access")]
    assert {(f.get("key"), f.get("outcome")) for f in access} >= {
        ("alice", "valid"),
        ("bob", "settled"),
        ("alice", "rate_limited"),
        (None, "unauthorized"),
    }
    metrics = pages[1].text
    assert 'x402_aggregator_access_refused_total{key="alice",reason="rate_limited"}' in metrics
    assert 'x402_aggregator_access_refused_total{key="-",reason="unauthorized"}' in metrics


async def test_the_sdk_client_passes_a_key(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPFacilitatorClient's ``create_headers`` carries the key on every call."""
    agg = guarded(aggregator, fakes("primary"), monkeypatch)
    auth = bearer(ALICE_KEY)
    client = HTTPFacilitatorClient(
        {
            "url": agg.url,
            "create_headers": lambda: {"verify": auth, "settle": auth, "supported": auth},
        }
    )
    anonymous = HTTPFacilitatorClient({"url": agg.url})
    payload, requirements = sdk_objects()

    supported = client.get_supported()
    verified = await client.verify(payload, requirements)
    settled = await client.settle(payload, requirements)
    with pytest.raises(ValueError, match="401"):
        anonymous.get_supported()
    await client.aclose()
    await anonymous.aclose()

    assert supported.kinds
    assert verified.is_valid is True
    assert settled.success is True


def test_access_control_is_off_by_default(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Without api_keys_env nobody is asked for a key and the hot path has no check."""
    agg = aggregator(fakes("primary"))
    app = create_app(aggregator=agg.engine)

    assert agg.post("/verify", v2_body()).status_code == 200
    assert agg.client.get("/supported").status_code == 200
    assert app._access is None
    assert app._serve == app._payment


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "not set"),
        ("", "not set"),
        ("   ", "not set"),
        (ALICE_KEY, "entry 1 is not name:key"),
        (f"alice:{ALICE_KEY},bob:", "entry 2 is not name:key"),
        (f"alice:{ALICE_KEY},{BOB_KEY}", "entry 2 is not name:key"),
        (f"-alice:{ALICE_KEY}", "name of entry 1"),
        (f"alice:{ALICE_KEY},alice:{BOB_KEY}", "entry 2 repeats the name"),
        (f"alice:{ALICE_KEY},bob:{ALICE_KEY}", "entry 2 repeats the key"),
        (f"alice:{ALICE_KEY} x", "key of entry 1"),
    ],
)
def test_a_bad_key_variable_stops_start_up_without_showing_keys(
    monkeypatch: pytest.MonkeyPatch, value: str | None, problem: str
) -> None:
    """create_app and check_secrets raise a ConfigError naming the variable, never a key."""
    if value is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, value)
    config = load_config(
        {
            "upstreams": [{"name": "primary", "url": "http://127.0.0.1:1"}],
            "server": {"api_keys_env": VARIABLE},
        }
    )

    for start in (lambda: check_secrets(config), lambda: create_app(config)):
        with pytest.raises(ConfigError) as caught:
            start()
        message = str(caught.value)
        assert VARIABLE in message
        assert problem in message
        assert ALICE_KEY not in message
        assert BOB_KEY not in message


def test_serve_exits_3_on_a_bad_key_variable(tmp_path: Any) -> None:
    """The command stops before listening, naming the variable and not the keys."""
    config = tmp_path / "keys.yaml"
    config.write_text(
        "server: {port: 0, api_keys_env: X402_TEST_KEYS}\n"
        "upstreams:\n  - name: primary\n    url: http://127.0.0.1:1\n"
    )
    env = {**os.environ, VARIABLE: f"alice{ALICE_KEY}"}

    result = subprocess.run(
        [sys.executable, "-m", "x402_aggregator", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )

    assert result.returncode == 3
    assert VARIABLE in result.stderr
    assert ALICE_KEY not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_rate_limit_needs_keys() -> None:
    with pytest.raises(ConfigError, match="rate_limit_per_s needs api_keys_env"):
        load_config(
            {
                "upstreams": [{"name": "primary", "url": "http://127.0.0.1:1"}],
                "server": {"rate_limit_per_s": 10},
            }
        )


@pytest.mark.parametrize(
    ("path", "method", "headers", "status"),
    [
        ("/verify", "post", {}, 401),
        ("/settle", "post", {}, 401),
        ("/supported", "get", {}, 401),
        ("/verify", "post", bearer(ALICE_KEY), 429),
        ("/settle", "post", bearer(ALICE_KEY), 429),
        ("/supported", "get", bearer(ALICE_KEY), 429),
    ],
)
def test_refusals_match_their_documented_schema(
    fakes: FakeFactory,
    aggregator: AggregatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    method: str,
    headers: dict[str, str],
    status: int,
) -> None:
    """401 and 429 answers validate against /openapi.json, which documents both headers."""
    agg = guarded(
        aggregator, fakes("primary"), monkeypatch, rate_limit_per_s=0.1, rate_limit_burst=1
    )
    spec = agg.client.get("/openapi.json").json()
    if status == 429:
        agg.client.get("/supported", headers=headers)  # spends the only token

    response = agg.client.request(
        method.upper(), path, json=v2_body() if method == "post" else None, headers=headers
    )

    assert response.status_code == status
    name = response_schema(spec, path, method, status)
    errors = list(validator(spec, name).iter_errors(response.json()))
    assert not errors, [e.message for e in errors]
    documented = spec["paths"][path][method]
    header = "WWW-Authenticate" if status == 401 else "Retry-After"
    assert header in documented["responses"][str(status)]["headers"]
    assert {"apiKeyBearer": []} in documented["security"]


def test_parse_keys_strips_spaces_and_keeps_colons_in_keys() -> None:
    assert parse_keys(VARIABLE, " a:x:y , b.2:z\n") == {"a": "x:y", "b.2": "z"}


def test_bucket_arithmetic_with_a_fake_clock() -> None:
    """Burst at once, then one per 1/rate seconds; the wait says when the next token comes."""
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)

    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0
    assert bucket.tokens == pytest.approx(2.0)  # capped at the burst, minus the one taken


def test_access_control_without_a_rate_never_limits() -> None:
    access = AccessControl({"alice": ALICE_KEY})

    assert all(access.check(f"Bearer {ALICE_KEY}".encode(), None) == "alice" for _ in range(1000))
    assert access.check(None, ALICE_KEY.encode()) == "alice"
    # A Bearer authorization wins over X-API-Key.
    assert access.check(f"Bearer {WRONG_KEY}".encode(), ALICE_KEY.encode()) != "alice"


def test_http_client_reuses_the_connection_after_a_refusal(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal answered before the body was read leaves the keep-alive connection usable."""
    agg = guarded(aggregator, fakes("primary"), monkeypatch)
    big = {**v2_body(), "padding": "x" * 200_000}

    with httpx.Client(base_url=agg.url, timeout=10.0) as client:
        refused = client.post("/verify", json=big)
        allowed = client.post("/verify", json=v2_body(), headers=bearer(ALICE_KEY))

    assert refused.status_code == 401
    assert allowed.status_code == 200
