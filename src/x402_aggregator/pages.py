"""The read-only pages: status, timeline, dashboard, OpenAPI, metrics, liveness, ledger records.

Each reads what serves requests now (:class:`.Live`), so a reload shows on the next request.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import Response

from . import metrics, openapi
from ._types import Operation
from ._version import __version__
from .ledger import STATES
from .live import Live
from .responses import json_response

_OPERATIONS: dict[str | None, Operation | None] = {
    None: None,
    "verify": "verify",
    "settle": "settle",
}


class Pages:
    """The engine's status, timeline and metrics, the dashboard, the OpenAPI document, liveness."""

    def __init__(self, live: Live) -> None:
        self._live = live
        self._dashboard = (Path(__file__).parent / "dashboard.html").read_bytes()
        self._api_document = orjson.dumps(openapi.spec())
        self._health = metrics.HealthCollector(
            lambda: live.engine.upstreams, lambda: live.engine.settler.unresolved
        )

    async def status(self, request: Request) -> Response:
        """The version, and every upstream's health and counters."""
        return json_response(200, {"version": __version__, **self._live.engine.status()})

    async def timeline(self, request: Request) -> Response:
        """Recent outcomes in time buckets, for one operation or both."""
        query = request.query_params
        if query.get("operation") not in _OPERATIONS:
            return json_response(400, {"error": "operation must be verify or settle"})
        operation = _OPERATIONS[query.get("operation")]
        try:
            window_s = min(float(query.get("window_s", 600)), 3600.0)
            bucket_s = max(float(query.get("bucket_s", 10)), 1.0)
        except ValueError:
            window_s = bucket_s = math.nan
        if not (math.isfinite(window_s) and math.isfinite(bucket_s)):
            return json_response(400, {"error": "window_s and bucket_s must be finite numbers"})
        return json_response(200, self._live.engine.timeline(window_s, bucket_s, operation))

    async def dashboard(self, request: Request) -> Response:
        """The monitoring page (it reads /status and /status/timeline)."""
        return Response(self._dashboard, media_type="text/html; charset=utf-8")

    async def openapi_json(self, request: Request) -> Response:
        """The OpenAPI document of every route."""
        return Response(self._api_document, media_type="application/json")

    async def prometheus(self, request: Request) -> Response:
        """The Prometheus exposition: counters, histograms and the upstreams' health."""
        body, content_type = metrics.exposition(self._health)
        return Response(body, media_type=content_type)

    async def healthz(self, request: Request) -> Response:
        """Answer ok while the process serves."""
        return json_response(200, {"status": "ok"})


class LedgerPages:
    """The ledger's settlement records; a ledger that cannot be read answers 503."""

    def __init__(self, live: Live) -> None:
        self._live = live

    async def settlements(self, request: Request) -> Response:
        """Recent settlement records, newest first, filtered by state, transaction or payer."""
        query = request.query_params
        state = query.get("state")
        if state is not None and state not in STATES:
            return json_response(400, {"error": f"state must be one of {', '.join(STATES)}"})
        limit = query.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            return json_response(400, {"error": "limit must be an integer from 1 to 500"})
        records = await self._live.engine.ledger.find(
            state=state,
            transaction=query.get("transaction"),
            payer=query.get("payer"),
            limit=int(limit),
        )
        return json_response(200, {"settlements": [r.public() for r in records]})

    async def settlement(self, request: Request) -> Response:
        """One payment's record and every attempt made for it."""
        record = await self._live.engine.ledger.get(request.path_params["id"])
        if record is None:
            return json_response(404, {"error": "no settlement with this id (it may have expired)"})
        return json_response(200, record.public())
