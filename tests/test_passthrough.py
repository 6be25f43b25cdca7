"""What the aggregator does not need to understand passes through it untouched, over real sockets.

A small upstream on 127.0.0.1 (Starlette under uvicorn) answers like a facilitator of a newer
protocol: ``extensions`` in its bodies, an ``EXTENSION-RESPONSES`` header, and (as
batch-settlement vouchers do) ``success: true`` with an empty ``transaction``. It keeps what it
was sent, so the test can check the caller's bytes arrived unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from x402_aggregator.localnet.live import LiveServer
from x402_aggregator.localnet.payloads import v2_body

from .conftest import AggregatorFactory

NETWORK = "eip155:84532"
HEADER = "eyJiYXRjaC1zZXR0bGVtZW50Ijp7InZvdWNoZXIiOiIweGFiIn19"  # opaque base64 JSON
VOUCHER = {
    "success": True,
    "transaction": "",
    "network": NETWORK,
    "extensions": {"batch-settlement": {"voucher": "0xab", "channel": 7}},
}


class NewerFacilitator:
    """An upstream speaking fields this aggregator has never heard of."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        app = Starlette(
            routes=[
                Route("/supported", self.supported, methods=["GET"]),
                Route("/verify", self.answer, methods=["POST"]),
                Route("/settle", self.answer, methods=["POST"]),
            ]
        )
        self.server = LiveServer(app)

    async def supported(self, request: Request) -> Response:
        kinds = [{"x402Version": 2, "scheme": "exact", "network": NETWORK}]
        body = {"kinds": kinds, "extensions": ["batch-settlement"], "signers": {}}
        return Response(orjson.dumps(body), media_type="application/json")

    async def answer(self, request: Request) -> Response:
        self.received.append((request.url.path, await request.body()))
        if request.url.path == "/verify":
            body: dict[str, Any] = {"isValid": True, "payer": "0x" + "11" * 20}
            body["extensions"] = {"batch-settlement": {"channel": 7}}
        else:
            body = VOUCHER
        headers = {"EXTENSION-RESPONSES": HEADER}
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)


@pytest.fixture
def newer() -> Iterator[NewerFacilitator]:
    upstream = NewerFacilitator()
    upstream.server.start()
    yield upstream
    upstream.server.stop()


def test_unknown_extensions_and_extension_responses_pass_through_both_ways(
    newer: NewerFacilitator, aggregator: AggregatorFactory
) -> None:
    agg = aggregator(f"newer={newer.server.url}")
    body = v2_body(extensions={"batch-settlement": {"info": {"channel": 7}, "schema": {}}})
    body["paymentPayload"]["payload"]["futureField"] = {"deep": [1, 2, {"x": None}]}
    sent = orjson.dumps(body)

    verified = agg.client.post(
        "/verify", content=sent, headers={"Content-Type": "application/json"}
    )
    settled = agg.client.post("/settle", content=sent, headers={"Content-Type": "application/json"})

    assert [path for path, _ in newer.received] == ["/verify", "/settle"]
    assert all(received == sent for _, received in newer.received)  # the caller's bytes
    assert verified.json()["extensions"] == {"batch-settlement": {"channel": 7}}
    assert verified.headers["EXTENSION-RESPONSES"] == HEADER
    assert settled.json() == VOUCHER  # a success, though it names no transaction
    assert settled.headers["EXTENSION-RESPONSES"] == HEADER


def test_a_voucher_success_is_recorded_once_and_a_copy_is_a_duplicate(
    newer: NewerFacilitator, aggregator: AggregatorFactory
) -> None:
    agg = aggregator(f"newer={newer.server.url}")
    body = v2_body()

    first = agg.post("/settle", body)
    again = agg.post("/settle", body)
    record = agg.client.get(f"/settlements/{first.headers['X402-Settlement-Id']}").json()

    assert first.json()["success"] is True, first.text
    assert (again.json()["errorReason"], again.json()["transaction"]) == (
        "duplicate_settlement",
        "",
    )
    assert (record["state"], record["transaction"], record["reported"]) == ("settled", None, True)
    assert [path for path, _ in newer.received] == ["/settle"]
