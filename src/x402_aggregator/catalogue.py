"""What the facilitator offers: the payment kinds it supports, the resources its upstreams list."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .access import AccessControl, Refusal, log_refusal
from .discovery import parse_query
from .live import Live
from .responses import json_response


class Catalogue:
    """``GET /supported`` (behind the API keys, if any) and ``GET /discovery/resources``."""

    def __init__(self, live: Live, access: AccessControl | None) -> None:
        self._live = live
        self._access = access

    async def supported(self, request: Request) -> Response:
        """The payment kinds the healthy upstreams support, merged."""
        if self._access is not None:
            raw = dict(request.scope["headers"])
            verdict = self._access.check(raw.get(b"authorization"), raw.get(b"x-api-key"))
            if not isinstance(verdict, str):
                return _refused(verdict, request.url.path)
        return Response(self._live.engine.supported(), media_type="application/json")

    async def resources(self, request: Request) -> Response:
        """The upstreams' discovery catalogues merged, filtered and paginated (x402 Bazaar)."""
        discovery = self._live.discovery
        if not discovery.config.enabled:
            return json_response(404, {"error": "discovery is off: set discovery.enabled"})
        try:
            query = parse_query(request.query_params)
        except ValueError as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(200, await discovery.page(query))


def _refused(verdict: Refusal, path: str) -> Response:
    """Log a refused caller and answer why, with the refusal's headers."""
    log_refusal(verdict, path, None)
    headers = {k.decode(): v.decode() for k, v in verdict.headers}
    body = orjson.dumps({"error": verdict.message, "reason": verdict.reason})
    return Response(body, verdict.status, headers, media_type="application/json")
