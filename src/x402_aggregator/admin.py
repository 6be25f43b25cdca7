"""The admin API: drain an upstream (no new traffic) or enable it again, behind a bearer token."""

from __future__ import annotations

import hmac

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .live import Live
from .responses import json_response


class Admin:
    """``POST /admin/upstreams/{name}/drain`` and ``.../enable``; off (404) without a token."""

    def __init__(self, live: Live, token: str | None) -> None:
        self._live = live
        self._token = token

    async def drain(self, request: Request) -> Response:
        """Send the named upstream no new traffic."""
        return self._set(request, drain=True)

    async def enable(self, request: Request) -> Response:
        """Let the named upstream take traffic again."""
        return self._set(request, drain=False)

    def _set(self, request: Request, drain: bool) -> Response:
        """Drain an upstream (no new traffic) or enable it again; needs the admin token."""
        if self._token is None:
            return json_response(404, {"error": "the admin API is off: set admin.token_env"})
        supplied = request.headers.get("authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {self._token}".encode()):
            return Response(
                orjson.dumps({"error": "a valid admin bearer token is required"}),
                401,
                {"WWW-Authenticate": "Bearer"},
                media_type="application/json",
            )
        name = request.path_params["name"]
        engine = self._live.engine
        if not engine.drain(name, drained=drain):
            return json_response(404, {"error": f"no upstream named {name!r}"})
        upstream = engine.upstream(name)
        assert upstream is not None
        state, reason = upstream.health.state()
        return json_response(200, {"name": name, "state": state, "reason": reason})
