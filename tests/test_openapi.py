"""The OpenAPI document matches the routes the server has and the answers it gives."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator

from x402_aggregator import ledger, metrics, openapi
from x402_aggregator._version import __version__
from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.server import create_app

from .conftest import AggregatorFactory, FakeFactory


def validator(spec: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", **spec})


def response_schema(spec: dict[str, Any], path: str, method: str, status: int) -> str:
    responses = spec["paths"][path][method]["responses"]
    ref: str = responses[str(status)]["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[1]


def test_every_route_is_documented_and_nothing_else(
    fakes: FakeFactory, aggregator: AggregatorFactory
) -> None:
    """The document's paths and methods are exactly the app's routes."""
    agg = aggregator(fakes("primary"))
    spec = agg.client.get("/openapi.json").json()
    app = create_app(agg.engine.config)

    routes = set(app.routes)
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}

    assert documented == routes
    Draft202012Validator.check_schema({"$defs": spec["components"]["schemas"]})


@pytest.mark.parametrize(
    ("path", "method", "body", "mode"),
    [
        ("/verify", "post", v2_body(), None),
        ("/settle", "post", v2_body(), None),
        ("/verify", "post", v2_body(), Mode.INVALID),
        ("/settle", "post", v2_body(), Mode.INVALID),
        ("/verify", "post", b"{bad", None),
        ("/settle", "post", v2_body(), Mode.HTTP500),
        ("/verify", "post", v2_body(), Mode.HTTP500),
        ("/supported", "get", None, None),
        ("/status", "get", None, None),
        ("/api/facilitator-status", "get", None, None),
        ("/status/timeline", "get", None, None),
        ("/healthz", "get", None, None),
        ("/discovery/resources", "get", None, None),
    ],
)
def test_answers_match_their_documented_schema(
    fakes: FakeFactory,
    aggregator: AggregatorFactory,
    path: str,
    method: str,
    body: Any,
    mode: Mode | None,
) -> None:
    """Real answers, good and bad, validate against the schema documented for their status."""
    primary = fakes("primary")
    agg = aggregator(primary)
    agg.post("/settle", v2_body())  # so /status has a settlement and latencies to show
    if mode is not None:
        primary.set("*", mode)
        primary.set("supported", Mode.OK)
    spec = agg.client.get("/openapi.json").json()

    if isinstance(body, bytes):
        response: httpx.Response = agg.client.post(path, content=body)
    elif body is not None:
        response = agg.client.request(method.upper(), path, json=body)
    else:
        response = agg.client.request(method.upper(), path)

    name = response_schema(spec, path, method, response.status_code)
    errors = list(validator(spec, name).iter_errors(response.json()))
    assert not errors, [e.message for e in errors]


def strings(node: Any) -> Iterator[str]:
    """Yield every string value in a decoded JSON document (keys excluded)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def test_packaged_document_has_its_computed_parts_filled_from_code() -> None:
    """The served version and state enums are the code's, with no placeholder left."""
    spec = openapi.spec()
    schemas = spec["components"]["schemas"]
    (state,) = [
        p for p in spec["paths"]["/settlements"]["get"]["parameters"] if p["name"] == "state"
    ]

    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["version"] == __version__
    assert schemas["Settlement"]["properties"]["state"]["enum"] == list(ledger.STATES)
    assert state["schema"]["enum"] == list(ledger.STATES)
    assert schemas["UpstreamStatus"]["properties"]["state"]["enum"] == list(metrics.STATES)
    assert not [s for s in strings(spec) if s.startswith(openapi.PLACEHOLDER_PREFIX)]


def test_every_computed_value_has_a_place_in_the_packaged_document() -> None:
    """Each placeholder the code fills occurs in openapi.json, so none is filled into nowhere."""
    raw = orjson.loads(openapi.DOCUMENT.read_bytes())
    placeholders = {s for s in strings(raw) if s.startswith(openapi.PLACEHOLDER_PREFIX)}

    assert placeholders == set(openapi.computed_values())


def test_unknown_placeholder_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A placeholder the code does not fill fails loading, naming it, rather than being served."""
    document = tmp_path / "openapi.json"
    document.write_bytes(orjson.dumps({"info": {"version": "<x402_aggregator.typo>"}}))
    monkeypatch.setattr(openapi, "DOCUMENT", document)

    with pytest.raises(ValueError, match=re.escape("<x402_aggregator.typo>")):
        openapi.spec()
