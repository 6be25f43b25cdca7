"""The aggregator as a facilitator over real sockets: uvicorn in front, fake facilitators behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from x402_aggregator.live import GC_THRESHOLD
from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.localnet.live import StalledListener, free_port
from x402_aggregator.localnet.payloads import v1_body, v2_body

from .conftest import AggregatorFactory, FakeFactory, upstream_entry

SOLANA_DEVNET = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"


def test_v2_verify_round_trip_forwards_the_callers_bytes(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A v2 verify reaches the primary byte for byte, unknown fields included."""
    primary = fakes("primary")
    agg = aggregator(primary, fakes("backup"))
    body = v2_body(extensions={"bazaar": {"info": {"x": 1}}})
    body["paymentPayload"]["payload"]["futureField"] = {"kept": True}
    raw = orjson.dumps(body)

    response = agg.client.post("/verify", content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 200
    assert response.json() == {
        "isValid": True,
        "payer": body["paymentPayload"]["payload"]["authorization"]["from"],
    }
    assert response.headers["X-Aggregator-Upstream"] == "primary"
    assert [r.body for r in primary.received if r.op == "verify"] == [raw]


def test_v2_settle_round_trip(fakes: FakeFactory, aggregator: AggregatorFactory) -> None:
    """A v2 settle returns the upstream's transaction and network."""
    agg = aggregator(fakes("primary"), fakes("backup"))

    response = agg.post("/settle", v2_body())

    answer = response.json()
    assert response.status_code == 200
    assert answer["success"] is True
    assert answer["network"] == "eip155:84532"
    assert answer["transaction"].startswith("0x")
    assert len(answer["transaction"]) == 66
    assert response.headers["X-Aggregator-Upstream"] == "primary"


def test_v1_round_trips(fakes: FakeFactory, aggregator: AggregatorFactory) -> None:
    """Legacy v1 bodies (network names, maxAmountRequired) verify and settle like v2 ones."""
    primary = fakes("primary")
    agg = aggregator(primary)

    verified = agg.post("/verify", v1_body())
    settled = agg.post("/settle", v1_body())

    assert verified.json()["isValid"] is True
    assert settled.json()["success"] is True
    assert settled.json()["network"] == "base-sepolia"
    assert primary.calls["verify"] == primary.calls["settle"] == 1


def test_version_routing_never_sends_v1_to_a_v2_only_upstream(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A v1 payment skips an upstream whose /supported lists only the v2 kind."""
    v2_only = fakes(
        "v2only", kinds=[{"x402Version": 2, "scheme": "exact", "network": "eip155:84532"}]
    )
    both = fakes("both")
    agg = aggregator(v2_only, both)

    response = agg.post("/verify", v1_body())

    assert response.headers["X-Aggregator-Upstream"] == "both"
    assert v2_only.calls["verify"] == 0


def test_supported_merges_kinds_signers_and_extensions(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """/supported is the deduplicated union of kinds, with signers merged and shared extensions."""
    primary = fakes(
        "primary",
        signers={"eip155:*": ["0xAAA"]},
        extensions=["bazaar", "payment-identifier"],
    )
    backup = fakes(
        "backup",
        kinds=[
            {"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
            {
                "x402Version": 2,
                "scheme": "exact",
                "network": SOLANA_DEVNET,
                "extra": {"feePayer": "FeePayer111"},
            },
        ],
        signers={"eip155:*": ["0xBBB"], "solana:*": ["FeePayer111"]},
        extensions=["bazaar"],
    )
    agg = aggregator(primary, backup)

    supported = agg.client.get("/supported").json()

    assert supported["kinds"] == [
        {"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
        {"x402Version": 1, "scheme": "exact", "network": "base-sepolia"},
        {
            "x402Version": 2,
            "scheme": "exact",
            "network": SOLANA_DEVNET,
            "extra": {"feePayer": "FeePayer111"},
        },
    ]
    assert supported["signers"] == {"eip155:*": ["0xAAA", "0xBBB"], "solana:*": ["FeePayer111"]}
    assert supported["extensions"] == ["bazaar"]


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        (Mode.HTTP500, {}),
        (Mode.HTTP429, {}),
        (Mode.HANG, {}),
        (Mode.RESET, {}),
        (Mode.GARBAGE, {}),
        (Mode.PARTIAL, {}),
        (Mode.INVALID, {"reason": "unexpected_verify_error"}),
        (Mode.INVALID, {"reason": "invalid_network", "status": 400}),
    ],
)
def test_verify_fails_over_when_the_primary_gives_no_usable_answer(
    fakes: FakeFactory, aggregator: AggregatorFactory, mode: Mode, params: dict[str, object]
) -> None:
    """Every answer that is not a definitive one about the payment moves a verify to the backup."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.set("verify", mode, **params)

    response = agg.post("/verify", v2_body())

    assert response.status_code == 200
    assert response.json()["isValid"] is True
    assert response.headers["X-Aggregator-Upstream"] == "backup"
    assert response.headers["X-Aggregator-Attempts"] == "2"
    assert (primary.calls["verify"], backup.calls["verify"]) == (1, 1)


def test_verify_fails_over_when_the_primary_is_down(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A refused connection moves a verify to the backup."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.stop()

    response = agg.post("/verify", v2_body())

    assert response.json()["isValid"] is True
    assert response.headers["X-Aggregator-Upstream"] == "backup"


@pytest.mark.parametrize(
    ("dialect", "status"),
    [("spec", 200), ("spec", 400), ("x402rs", 400), ("minimal", 200), ("error", 200)],
)
def test_definitive_rejection_is_returned_as_200_in_spec_shape(
    fakes: FakeFactory, aggregator: AggregatorFactory, dialect: str, status: int
) -> None:
    """A business rejection, in any status and field names, is relayed as 200 in spec shape."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.set("*", Mode.INVALID, reason="insufficient_funds", status=status, dialect=dialect)

    verified = agg.post("/verify", v2_body())
    settled = agg.post("/settle", v2_body())

    assert verified.status_code == settled.status_code == 200
    assert verified.json()["isValid"] is False
    assert verified.json()["invalidReason"] == "insufficient_funds"
    settle = settled.json()
    assert (settle["success"], settle["errorReason"]) == (False, "insufficient_funds")
    assert settle["transaction"] == ""
    assert settle["network"] == "eip155:84532"
    assert backup.calls["verify"] == backup.calls["settle"] == 0


def test_verify_rejection_with_http_402_is_definitive(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A verify rejected with HTTP 402 (as CDP may answer) is definitive, relayed as 200."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.set("verify", Mode.INVALID, status=402, dialect="minimal")

    response = agg.post("/verify", v2_body())

    assert response.status_code == 200
    assert response.json()["invalidReason"] == "invalid_exact_evm_payload_signature"
    assert backup.calls["verify"] == 0


def test_rejection_keeps_the_upstreams_message_and_fields(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """The upstream's reason text survives normalisation, in the canonical field and its own."""
    primary = fakes("primary")
    agg = aggregator(primary)
    primary.set("verify", Mode.INVALID, dialect="x402rs", status=400, message="balance 5 < 10000")

    answer = agg.post("/verify", v2_body()).json()

    assert answer["invalidMessage"] == "balance 5 < 10000"
    assert answer["invalidReasonDetails"] == "balance 5 < 10000"


def test_settle_moves_on_when_the_primary_refuses_connections(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A settle that provably never reached the primary (refused) is sent to the backup."""
    backup = fakes("backup")
    agg = aggregator(f"primary=http://127.0.0.1:{free_port()}", backup)

    response = agg.post("/settle", v2_body())

    assert response.json()["success"] is True
    assert response.headers["X-Aggregator-Upstream"] == "backup"
    assert backup.calls["settle"] == 1


def test_settle_moves_on_after_a_connect_timeout(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A settle whose connection could not be opened in time is sent to the backup."""
    stalled = StalledListener()
    backup = fakes("backup")
    try:
        agg = aggregator(f"primary={stalled.url}", backup)
        started = time.monotonic()
        response = agg.post("/settle", v2_body())
        elapsed = time.monotonic() - started
    finally:
        stalled.close()

    assert response.json()["success"] is True
    assert response.headers["X-Aggregator-Upstream"] == "backup"
    assert elapsed < 1.0  # the 0.5 s connect timeout, not the 1 s call budget


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        (Mode.HTTP500, {}),
        (Mode.HTTP429, {}),
        (Mode.HANG, {}),
        (Mode.RESET, {}),
        (Mode.GARBAGE, {}),
        (Mode.PARTIAL, {}),
        (Mode.INVALID, {"status": 402}),
        (Mode.INVALID, {"status": 500, "reason": "unexpected_settle_error"}),
    ],
)
def test_settle_with_an_unknown_outcome_is_never_sent_elsewhere(
    fakes: FakeFactory, aggregator: AggregatorFactory, mode: Mode, params: dict[str, object]
) -> None:
    """A settle that may have arrived is answered settlement_outcome_unknown, never sent on."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.set("settle", mode, **params)

    response = agg.post("/settle", v2_body())

    answer = response.json()
    assert response.status_code == 200
    assert answer["success"] is False
    assert answer["errorReason"] == "settlement_outcome_unknown"
    assert answer["network"] == "eip155:84532"
    assert answer["transaction"] == ""
    assert response.headers["X-Aggregator-Upstream"] == "primary"
    assert (primary.calls["settle"], backup.calls["settle"]) == (1, 0)


def test_settlement_pending_is_passed_through_with_its_transaction(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """settlement_pending reaches the caller with its tx hash; no other upstream is asked."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.set("settle", Mode.PENDING)

    answer = agg.post("/settle", v2_body()).json()

    assert (answer["success"], answer["errorReason"]) == (False, "settlement_pending")
    assert answer["transaction"].startswith("0x")
    assert backup.calls["settle"] == 0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_payload"),
        (b"[1, 2]", "invalid_payload"),
        (b'{"x402Version": 2}', "invalid_payload"),
        (orjson.dumps({**v2_body(), "paymentRequirements": "x"}), "invalid_payment_requirements"),
        (
            orjson.dumps(
                {"x402Version": 7, "paymentPayload": {"x402Version": 7}, "paymentRequirements": {}}
            ),
            "invalid_x402_version",
        ),
        (orjson.dumps({**v2_body(), "x402Version": 1}), "invalid_x402_version"),
    ],
)
@pytest.mark.parametrize("operation", ["verify", "settle"])
def test_bad_input_is_400_x402_shaped_and_never_forwarded(
    fakes: FakeFactory, aggregator: AggregatorFactory, raw: bytes, reason: str, operation: str
) -> None:
    """Malformed bodies get HTTP 400 with an x402 reason; no upstream sees them."""
    primary = fakes("primary")
    agg = aggregator(primary)

    response = agg.client.post(f"/{operation}", content=raw)

    assert response.status_code == 400
    answer = response.json()
    flag, reason_key = (
        ("isValid", "invalidReason") if operation == "verify" else ("success", "errorReason")
    )
    assert answer[flag] is False
    assert answer[reason_key] == reason
    assert primary.calls[operation] == 0


def test_missing_requirement_fields_are_named(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A payload missing a required field is refused with a message naming it."""
    agg = aggregator(fakes("primary"))
    body = v2_body()
    body["paymentRequirements"] = {**body["paymentRequirements"]}
    del body["paymentRequirements"]["payTo"]

    answer = agg.post("/verify", body).json()

    assert answer["invalidReason"] == "invalid_payment_requirements"
    assert "payTo" in answer["invalidMessage"]


def test_oversize_bodies_are_413_whether_declared_or_streamed(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Bodies over 1 MiB get 413, with or without a Content-Length; nothing is forwarded."""
    primary = fakes("primary")
    agg = aggregator(primary)
    big = b"x" * (1024 * 1024 + 1)

    declared = agg.client.post("/settle", content=big)
    streamed = agg.client.post("/verify", content=iter([big[:600_000], big[600_000:]]))

    assert declared.status_code == streamed.status_code == 413
    assert declared.json()["errorReason"] == "request_too_large"
    assert streamed.json()["invalidReason"] == "request_too_large"
    assert primary.calls["verify"] == primary.calls["settle"] == 0


def test_all_upstreams_failing_is_502_listing_each_failure(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """When no candidate answers, the caller gets 502 naming every upstream's failure."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.set("verify", Mode.HTTP500)
    backup.set("verify", Mode.GARBAGE)

    response = agg.post("/verify", v2_body())

    assert response.status_code == 502
    answer = response.json()
    assert answer["invalidReason"] == "no_upstream_available"
    assert [u["name"] for u in answer["upstreams"]] == ["primary", "backup"]
    assert "HTTP 500" in answer["upstreams"][0]["error"]


def test_settle_with_every_upstream_unreachable_is_502(aggregator: AggregatorFactory) -> None:
    """A settle that reached no upstream at all is a 502, and says nothing was settled."""
    agg = aggregator(f"a=http://127.0.0.1:{free_port()}", f"b=http://127.0.0.1:{free_port()}")

    response = agg.post("/settle", v2_body())

    assert response.status_code == 502
    assert response.json()["errorReason"] == "no_upstream_available"


def test_a_soft_rejection_is_returned_when_no_upstream_does_better(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """If every upstream gives an upstream-side reason, the first is returned, not a 502."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup)
    primary.set("verify", Mode.INVALID, reason="node_failure")
    backup.set("verify", Mode.HTTP500)

    response = agg.post("/verify", v2_body())

    assert response.status_code == 200
    assert response.json()["invalidReason"] == "node_failure"
    assert response.headers["X-Aggregator-Upstream"] == "primary"


def test_unsupported_kinds_are_answered_without_asking_anyone(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Unknown network is invalid_network, unknown scheme unsupported_scheme, both HTTP 200."""
    primary = fakes("primary")
    agg = aggregator(primary)

    network = agg.post("/verify", v2_body(network="eip155:1"))
    scheme = agg.post("/settle", v2_body(scheme="upto"))

    assert network.status_code == scheme.status_code == 200
    assert network.json()["invalidReason"] == "invalid_network"
    assert scheme.json()["errorReason"] == "unsupported_scheme"
    assert primary.calls["verify"] == primary.calls["settle"] == 0


def test_solana_payments_go_to_the_owner_of_their_fee_payer(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A payment naming a fee payer is routed only to the upstream that signs with it."""
    kind = {"x402Version": 2, "scheme": "exact", "network": SOLANA_DEVNET}
    first = fakes("first", kinds=[kind], signers={"solana:*": ["PayerOfFirst"]})
    second = fakes("second", kinds=[kind], signers={"solana:*": ["PayerOfSecond"]})
    agg = aggregator(first, second)

    owned = agg.post("/verify", v2_body(network=SOLANA_DEVNET, extra={"feePayer": "PayerOfSecond"}))
    foreign = agg.post("/verify", v2_body(network=SOLANA_DEVNET, extra={"feePayer": "Nobody"}))

    assert owned.headers["X-Aggregator-Upstream"] == "second"
    assert foreign.json()["invalidReason"] == "fee_payer_not_managed_by_facilitator"
    assert first.calls["verify"] == 0


def test_a_hanging_upstream_never_blocks_supported(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """With an upstream hanging on /supported, start-up is bounded and /supported is instant."""
    primary, backup = fakes("primary"), fakes("backup", extensions=["bazaar"])
    primary.set("supported", Mode.HANG)
    started = time.monotonic()
    agg = aggregator(primary, backup, health={"startup_wait_s": 0.5, "timeout_s": 3.0})
    startup = time.monotonic() - started

    before = time.monotonic()
    response = agg.client.get("/supported")
    elapsed = time.monotonic() - before

    assert response.status_code == 200
    assert startup < 2.0
    assert elapsed < 0.5
    assert response.json()["extensions"] == ["bazaar"]
    assert {k["network"] for k in response.json()["kinds"]} == {"eip155:84532", "base-sepolia"}


def test_upstreams_of_unknown_capability_are_tried_after_known_ones(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """An upstream whose /supported never answered is asked after those known to support it."""
    primary, backup = fakes("primary"), fakes("backup")
    primary.set("supported", Mode.HTTP500)
    agg = aggregator(primary, backup)

    first = agg.post("/verify", v2_body())
    backup.set("verify", Mode.HTTP500)
    second = agg.post("/verify", v2_body())

    assert first.headers["X-Aggregator-Upstream"] == "backup"
    assert second.headers["X-Aggregator-Upstream"] == "primary"


def test_an_upstream_that_comes_back_is_discovered_in_the_background(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """A dead upstream's kinds appear in /supported soon after it starts answering."""
    late = fakes("late", kinds=[{"x402Version": 2, "scheme": "exact", "network": "eip155:137"}])
    late.set("supported", Mode.HTTP500)
    agg = aggregator(fakes("primary"), late, health={"unknown_retry_s": 0.1, "interval_s": 0.3})
    assert "eip155:137" not in agg.client.get("/supported").text

    late.set("supported", Mode.OK)
    deadline = time.monotonic() + 5
    while "eip155:137" not in agg.client.get("/supported").text:
        assert time.monotonic() < deadline, "the upstream was never rediscovered"
        time.sleep(0.05)
    assert (
        agg.post("/verify", v2_body(network="eip155:137")).headers["X-Aggregator-Upstream"]
        == "late"
    )


def test_status_reports_state_counts_and_errors_without_secrets(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/status shows each upstream's state, counters and last error, and never its token."""
    monkeypatch.setenv("PRIMARY_TOKEN", "s3cr3t-token-value")
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(
        upstream_entry(primary, 0, auth={"type": "bearer", "token_env": "PRIMARY_TOKEN"}),
        upstream_entry(backup, 1),
    )
    primary.set("verify", Mode.HTTP500)
    agg.post("/verify", v2_body())

    response = agg.client.get("/status")

    assert "s3cr3t" not in response.text
    status = {u["name"]: u for u in response.json()["upstreams"]}
    assert status["primary"]["url"] == primary.url
    assert (status["primary"]["requests"], status["primary"]["failures"]) == (1, 1)
    assert "HTTP 500" in status["primary"]["last_error"]
    assert status["backup"]["state"] == "healthy"
    assert status["backup"]["kinds"] == ["v2 exact eip155:84532", "v1 exact base-sepolia"]
    assert response.json()["totals"]["requests"]["verify"] == 1


def test_upstream_credentials_are_sent_and_caller_credentials_are_not(
    fakes: FakeFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream gets its own bearer token; the caller's Authorization is not forwarded."""
    monkeypatch.setenv("PRIMARY_TOKEN", "upstream-token")
    primary = fakes("primary")
    agg = aggregator(
        upstream_entry(primary, 0, auth={"type": "bearer", "token_env": "PRIMARY_TOKEN"})
    )

    agg.client.post("/verify", json=v2_body(), headers={"Authorization": "Bearer caller-token"})

    headers = next(r.headers for r in primary.received if r.op == "verify")
    assert headers["authorization"] == "Bearer upstream-token"


def test_healthz_and_unknown_routes(fakes: FakeFactory, aggregator: AggregatorFactory) -> None:
    """Liveness answers 200; unknown paths and methods get JSON 404/405, not HTML."""
    agg = aggregator(fakes("primary"))

    assert agg.client.get("/healthz").json() == {"status": "ok"}
    assert agg.client.get("/nope").status_code == 404
    wrong = agg.client.get("/verify")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/json"


def test_concurrent_verifies_share_the_pool(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """Many verifies in flight at once are all answered by the primary."""
    import concurrent.futures

    primary = fakes("primary", latency_s=0.02)
    agg = aggregator(primary, fakes("backup"), routing={"hedge": False})

    def one(_: int) -> str:
        with httpx.Client(base_url=agg.url, timeout=10) as client:
            return client.post("/verify", json=v2_body()).headers["X-Aggregator-Upstream"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answered = list(pool.map(one, range(64)))

    assert answered == ["primary"] * 64
    assert primary.calls["verify"] == 64


def test_only_the_serving_process_tunes_the_garbage_collector(
    fakes: FakeFactory, tmp_path: Path
) -> None:
    """``serve``'s app freezes start-up objects and collects less often; a library user's not."""
    script = """
import asyncio, gc, sys
from x402_aggregator.server import app_from_environment, create_app
from x402_aggregator.config import load_config

async def started(app):
    async with app.starlette.router.lifespan_context(app.starlette):
        return gc.get_threshold()[0], gc.get_freeze_count() > 0

print(*asyncio.run(started(create_app(load_config()))))
print(*asyncio.run(started(app_from_environment())))
"""
    primary = fakes("primary")
    config = tmp_path / "agg.yaml"
    config.write_text(f"upstreams: [{{name: primary, url: '{primary.url}'}}]\n")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "X402_AGGREGATOR_CONFIG": str(config)},
        check=False,
    )

    assert result.returncode == 0, result.stderr
    library, serving = result.stdout.split("\n")[:2]
    assert library == "700 False"
    assert serving == f"{GC_THRESHOLD} True"
