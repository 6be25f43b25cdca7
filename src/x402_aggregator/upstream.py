"""One upstream facilitator: where it is, how to call it, and what its answers mean.

Every call ends in an :class:`~x402_aggregator.outcome.Outcome`, never an exception, so the
engine decides on values.
"""

from __future__ import annotations

import logging
import time

import orjson

from ._types import JSONObject, Operation
from ._version import __version__
from .auth import Authenticator, authenticator
from .capabilities import Capabilities, parse_supported
from .config import UpstreamConfig
from .errors import ConnectionLost, SigningError, TransportError, UpstreamAuthError
from .health import UpstreamHealth
from .logs import REQUEST_ID
from .outcome import Outcome, OutcomeKind
from .protocol import SETTLEMENT_PENDING, PaymentRequest, normalise_answer, reason_of
from .secrets import upstream_secrets
from .stats import UpstreamStats
from .transport import Transport, UpstreamRequest, UpstreamResponse

logger = logging.getLogger("x402_aggregator.upstream")

#: Verify rejections that say more about the upstream than the payment: another may accept it.
SOFT_VERIFY_REASONS = frozenset(
    {
        "unsupported_scheme",
        "invalid_scheme",
        "invalid_network",
        "unexpected_verify_error",
        "unexpected_error",
        "unknown_error",
        "node_failure",
        "invalid_exact_evm_failed_to_get_network_config",
        "invalid_exact_evm_failed_to_get_asset_info",
    }
)
EXTENSION_RESPONSES = "EXTENSION-RESPONSES"


class Upstream:
    """A facilitator we forward to: configuration, credentials and last known capabilities."""

    def __init__(
        self,
        config: UpstreamConfig,
        transport: Transport,
        health: UpstreamHealth | None = None,
        *,
        auth: Authenticator | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._transport = transport
        self._base = config.base_url
        # Built by the engine from its one read of the secrets; an upstream made on its own
        # reads just the variables its ``auth`` names.
        self._auth = auth or authenticator(config, upstream_secrets(config))
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"x402-aggregator/{__version__}",
            **config.headers,
        }
        #: Static credentials are merged once; signed ones (cdp, payai) per request.
        self._signed = not self._auth.static
        if not self._signed:
            self._headers.update(self._auth.headers("", self._base))
        self.capabilities: Capabilities | None = None
        self.health = health or UpstreamHealth(config.name)
        self.stats = UpstreamStats()

    def __repr__(self) -> str:
        return f"Upstream(name={self.name!r}, url={self.display_url!r})"

    @property
    def auth(self) -> Authenticator:
        """This upstream's credentials, for other callers of it (its token cache is shared)."""
        return self._auth

    @property
    def display_url(self) -> str:
        """The base URL; safe for logs and status pages, as config refuses credentials in it."""
        return self._base

    async def call(
        self, operation: Operation, request: PaymentRequest, *, timeout_s: float | None = None
    ) -> Outcome:
        """Send a verify or settle and classify what came back.

        ``timeout_s`` shortens the configured budget, e.g. to what is left of a deadline.
        """
        settle = operation == "settle"
        budget = self.config.settle_timeout if settle else self.config.timeout_s
        if timeout_s is not None:
            budget = min(budget, timeout_s)
        request_id = REQUEST_ID.get()
        url = f"{self._base}/{operation}"
        headers = self._headers
        if self._signed:
            try:
                headers = {**headers, **self._auth.headers("POST", url)}
            except SigningError as exc:
                # Nothing was sent, so even a settle may go elsewhere.
                return Outcome(
                    "retryable",
                    self.name,
                    0.0,
                    error=str(exc),
                    operation=operation,
                    never_arrived=True,
                )
        outgoing = UpstreamRequest(
            method="POST",
            url=url,
            headers={**headers, "X-Request-Id": request_id} if request_id else headers,
            body=request.body,
            timeout_s=budget,
            connect_timeout_s=self.config.connect_timeout_s,
            fresh_connection=settle,
        )
        started = time.perf_counter()
        try:
            response = await self._transport.send(outgoing)
        except (TransportError, ValueError, RuntimeError) as exc:
            error = exc if isinstance(exc, TransportError) else _unexpected(operation, self, exc)
            elapsed = time.perf_counter() - started
            # For a settle, "retryable" means exactly this: the request never reached the upstream.
            kind: OutcomeKind = "retryable" if error.never_arrived or not settle else "ambiguous"
            return Outcome(
                kind,
                self.name,
                elapsed,
                error=str(error),
                operation=operation,
                never_arrived=error.never_arrived,
            )
        elapsed = time.perf_counter() - started
        return _classify(operation, self.name, response, request.kind.network, elapsed)

    async def probe(self, timeout_s: float, transport: Transport | None = None) -> Capabilities:
        """Fetch ``/supported``; raise ``TransportError`` or ``ValueError`` if it fails."""
        url = f"{self._base}/supported"
        headers = self._headers
        if self._signed:
            try:
                headers = {**headers, **self._auth.headers("GET", url)}
            except SigningError as exc:
                raise UpstreamAuthError(str(exc)) from None
        response = await (transport or self._transport).send(
            UpstreamRequest(
                method="GET",
                url=url,
                headers=headers,
                timeout_s=timeout_s,
                connect_timeout_s=min(self.config.connect_timeout_s, timeout_s),
            )
        )
        if response.status in (401, 403, 407):
            raise UpstreamAuthError(
                f"/supported: HTTP {response.status}: the upstream refused our credentials "
                "(check its auth)"
            )
        if response.status != 200:
            raise ValueError(f"/supported: {_describe_unusable(response.status, response)}")
        try:
            data = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise ValueError("/supported answered a body that is not JSON") from None
        return parse_supported(data)


def _unexpected(operation: Operation, upstream: Upstream, exc: Exception) -> TransportError:
    """An error the transport did not map (aiohttp refusing a header value, say).

    Whether any byte left is unknown, so it counts as "may have arrived". Only the exception's
    type is logged: its text may quote a header, and headers carry credentials.
    """
    logger.error("%s to %s failed unexpectedly: %s", operation, upstream.name, type(exc).__name__)
    return ConnectionLost(f"unexpected {type(exc).__name__} while calling the upstream")


def _classify(
    operation: Operation, name: str, response: UpstreamResponse, network: str, elapsed: float
) -> Outcome:
    status = response.status
    try:
        decoded = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        decoded = None
    answer = normalise_answer(operation, decoded, network)
    extensions = response.headers.get(EXTENSION_RESPONSES)
    if answer is None:
        kind: OutcomeKind = "ambiguous" if operation == "settle" else "retryable"
        error = _describe_unusable(status, response)
        return Outcome(kind, name, elapsed, status, error=error, operation=operation)
    kind = _kind_of(operation, status, answer)
    if kind in ("ok", "rejected"):
        raw = response.body if answer is decoded and status == 200 else None
        return Outcome(kind, name, elapsed, status, answer, raw, None, extensions, operation)
    error = f"HTTP {status}: {reason_of(operation, answer) or 'no reason'}"
    if kind == "ambiguous" and reason_of(operation, answer) != SETTLEMENT_PENDING:
        # A failure body with a 5xx/402 status cannot be trusted to mean "nothing happened":
        # keep its reason for the record, but do not let it pass for a definitive answer.
        return Outcome(kind, name, elapsed, status, error=error, operation=operation)
    return Outcome(kind, name, elapsed, status, answer, None, error, extensions, operation)


def _kind_of(operation: Operation, status: int, answer: JSONObject) -> OutcomeKind:
    success = answer["isValid" if operation == "verify" else "success"]
    if operation == "verify":
        # 401/403/407: the upstream refused *us* (credentials, quota), which says nothing about
        # the payment; another upstream may well answer.
        if status >= 500 or status in (401, 403, 407, 429) or (success and status >= 300):
            return "retryable"
        if success:
            return "ok"
        return "retryable" if reason_of(operation, answer) in SOFT_VERIFY_REASONS else "rejected"
    # A settle that may have been acted on is never reported as a definitive failure.
    if status >= 500 or status == 402 or (success and status >= 300):
        return "ambiguous"
    if success:
        return "ok"
    return "ambiguous" if reason_of(operation, answer) == SETTLEMENT_PENDING else "rejected"


def _describe_unusable(status: int, response: UpstreamResponse) -> str:
    body = response.body
    if 300 <= status < 400:
        # Redirects are not followed: upstream URLs come only from configuration.
        target = response.headers.get("Location", "?")
        return f"HTTP {status} redirect to {target}; configure the upstream's final URL"
    if status in (401, 403):
        return f"HTTP {status}: the upstream refused our credentials (check its auth)"
    if not body:
        return f"HTTP {status} with an empty body"
    return f"HTTP {status} with a body that is not a facilitator answer ({len(body)} bytes)"
