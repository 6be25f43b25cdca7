"""The HTTP face: the facilitator API, status pages, metrics, dashboard and admin.

``/verify`` and ``/settle`` are served by :mod:`.endpoints` (the hot path, raw ASGI); the rest
by Starlette on uvicorn. Every answer is JSON, every error x402-shaped, no traceback ever leaves.
Here the pieces are wired together: each route's handler lives in the module named after it.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from . import logs
from .access import AccessControl, access_control
from .admin import Admin
from .aggregator import Aggregator
from .catalogue import Catalogue
from .config import Config, load_config
from .endpoints import PATHS, PaymentEndpoints
from .ledger import LedgerError
from .live import Live
from .pages import LedgerPages, Pages
from .responses import http_error, internal_error, ledger_error
from .secrets import Secrets, read_secrets

__all__ = ["FacilitatorApp", "app_from_environment", "create_app"]


class FacilitatorApp(PaymentEndpoints):
    """The whole service as one ASGI app: the payment hot path, then Starlette for the rest."""

    def __init__(
        self, engine: Aggregator, app: Starlette, access: AccessControl | None = None
    ) -> None:
        super().__init__(engine, app, access)
        self.starlette = app

    @property
    def routes(self) -> list[tuple[str, str]]:
        """(path, method) of every endpoint, for the OpenAPI check."""
        routes = [(path, "post") for path in PATHS]
        for route in self.starlette.routes:
            if isinstance(route, Route):
                routes += [(route.path, m.lower()) for m in route.methods or () if m != "HEAD"]
        return routes


def create_app(
    config: Config | None = None,
    *,
    aggregator: Aggregator | None = None,
    serving: bool = False,
) -> FacilitatorApp:
    """Build the ASGI app around an :class:`Aggregator` (made from ``config`` if not given).

    ``serving`` is for a process that does nothing but serve this app (``serve``): it tunes
    the interpreter's garbage collector for the whole process, and reloads the configuration
    (from ``X402_AGGREGATOR_CONFIG`` and the environment) on SIGHUP.
    """
    if aggregator is None:
        if config is None:
            raise ValueError("create_app needs a config or an aggregator")
        aggregator = Aggregator(config)
    engine = aggregator
    # Read (and checked) once at start: the service's own secrets (API keys, admin token).
    secrets = read_secrets(engine.config)
    # None when server.api_keys_env is unset.
    access = access_control(engine.config.server, secrets.values)
    # What serves requests now: a reload (SIGHUP) swaps the engine and discovery in one step.
    live = Live(engine, serving=serving)
    app = Starlette(
        routes=_routes(live, access, secrets),
        lifespan=live.lifespan,
        exception_handlers={
            HTTPException: http_error,
            LedgerError: ledger_error,
            Exception: internal_error,
        },
    )
    facilitator = FacilitatorApp(engine, app, access)
    live.endpoints = facilitator  # so that a reload swaps the hot path's engine too
    return facilitator


def _routes(live: Live, access: AccessControl | None, secrets: Secrets) -> list[Route]:
    """Every route Starlette serves, each to a method of the object that owns the page."""
    catalogue = Catalogue(live, access)
    pages = Pages(live)
    ledger = LedgerPages(live)
    # The admin token is read once at start; a reload does not change it.
    admin = Admin(live, secrets.admin_token)
    return [
        Route("/supported", catalogue.supported, methods=["GET"]),
        Route("/discovery/resources", catalogue.resources, methods=["GET"]),
        Route("/status", pages.status, methods=["GET"]),
        Route("/status/timeline", pages.timeline, methods=["GET"]),
        # The name the seed project's monitoring page used.
        Route("/api/facilitator-status", pages.status, methods=["GET"]),
        Route("/", pages.dashboard, methods=["GET"]),
        Route("/openapi.json", pages.openapi_json, methods=["GET"]),
        Route("/healthz", pages.healthz, methods=["GET"]),
        Route("/metrics", pages.prometheus, methods=["GET"]),
        Route("/settlements", ledger.settlements, methods=["GET"]),
        Route("/settlements/{id}", ledger.settlement, methods=["GET"]),
        Route("/admin/upstreams/{name}/drain", admin.drain, methods=["POST"]),
        Route("/admin/upstreams/{name}/enable", admin.enable, methods=["POST"]),
    ]


def app_from_environment() -> FacilitatorApp:
    """App factory for uvicorn workers: the configuration comes from ``X402_AGGREGATOR_*``."""
    config = load_config()
    logs.configure(config.server.log_level, config.server.log_format)
    return create_app(config, serving=True)
