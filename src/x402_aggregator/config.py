"""Configuration: one YAML file, validated once at start, every field overridable by environment.

Environment variables use the prefix ``X402_AGGREGATOR_`` and ``__`` between nested names, e.g.
``X402_AGGREGATOR_SERVER__PORT=8080``. Secrets are never written in the file: the file names the
environment variable that holds them (``token_env: CDP_TOKEN``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError

CONFIG_ENV = "X402_AGGREGATOR_CONFIG"
ENV_PREFIX = "X402_AGGREGATOR_"
MiB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(4020, ge=0, le=65535)
    max_body_bytes: int = Field(MiB, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``json``: one JSON object per line (with request id, upstream, outcome, latency).
    log_format: Literal["text", "json"] = "text"
    #: Environment variable holding the callers' API keys as ``name:key,name:key``; without it
    #: the facilitator API is open (see :mod:`.access`).
    api_keys_env: str | None = None
    #: Requests per second each API key may make (a token bucket per key); None: unlimited.
    rate_limit_per_s: float | None = Field(None, gt=0)
    #: Requests a key may make at once after being idle (the bucket's size).
    rate_limit_burst: int = Field(20, ge=1)
    #: The client for upstream calls: ``http1`` (lean, on asyncio + llhttp, see :mod:`.http1`)
    #: or ``aiohttp`` (the general client it replaced; kept to compare, and as a way back).
    upstream_client: Literal["http1", "aiohttp"] = "http1"

    @model_validator(mode="after")
    def _rate_limit_needs_keys(self) -> ServerConfig:
        # Buckets are per key: without keys there is nothing to count against.
        if self.rate_limit_per_s is not None and self.api_keys_env is None:
            raise ValueError("rate_limit_per_s needs api_keys_env (the limit is per API key)")
        return self


class BearerAuth(_Section):
    """``Authorization: Bearer <token>``, the token read from an environment variable."""

    type: Literal["bearer"]
    token_env: str


class HeaderAuth(_Section):
    """One header whose value is read from an environment variable (e.g. ``X-API-Key``)."""

    type: Literal["header"]
    name: str
    value_env: str


class CdpAuth(_Section):
    """Coinbase CDP API key: a fresh ES256/Ed25519 JWT bound to each request's method and URL.

    Needs the optional extra ``x402-aggregator[cdp]`` (cdp-sdk signs the tokens).
    """

    type: Literal["cdp"]
    key_id_env: str = "CDP_API_KEY_ID"
    key_secret_env: str = "CDP_API_KEY_SECRET"  # noqa: S105 - a variable name


class PayaiAuth(_Section):
    """PayAI merchant key: short-lived Ed25519 JWTs (``iss: payai-merchant``)."""

    type: Literal["payai"]
    key_id_env: str = "PAYAI_API_KEY_ID"
    key_secret_env: str = "PAYAI_API_KEY_SECRET"  # noqa: S105 - a variable name


Auth = Annotated[BearerAuth | HeaderAuth | CdpAuth | PayaiAuth, Field(discriminator="type")]


class UpstreamConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    url: HttpUrl
    priority: int = 0
    weight: int = Field(1, ge=1)
    enabled: bool = True
    #: Budget of one verify or /supported call.
    timeout_s: float = Field(10.0, gt=0)
    #: Budget of one settle, which waits for on-chain confirmation. Default: max(timeout_s, 60).
    settle_timeout_s: float | None = Field(None, gt=0)
    #: Opening a connection; a settle moves to another upstream only when this phase fails.
    connect_timeout_s: float = Field(3.0, gt=0)
    #: Extra static headers (not secrets: use ``auth`` for those).
    headers: dict[str, str] = Field(default_factory=dict)
    auth: Auth | None = None

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: HttpUrl) -> HttpUrl:
        # Credentials in a URL end up in logs and status pages; auth belongs in `auth`.
        if url.username or url.password or url.query or url.fragment:
            raise ValueError(
                "credentials, query strings and fragments are not allowed in the URL; "
                "put secrets in `auth` (read from an environment variable)"
            )
        return url

    @property
    def settle_timeout(self) -> float:
        return self.settle_timeout_s or max(self.timeout_s, 60.0)

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")


class RoutingConfig(_Section):
    #: ``priority``: lower priority first (Envoy-like tiers); ``weighted``: smooth weighted round
    #: robin within the best available tier; ``latency``: power of two choices on measured
    #: latency within the best available tier.
    strategy: Literal["priority", "weighted", "latency"] = "priority"
    #: Ask the next candidate when a verify's first candidate is slow (never for settles).
    hedge: bool = True
    #: Fixed hedge delay; unset means adaptive: about the p95 of the upstream's recent verifies.
    hedge_after_ms: float | None = Field(None, gt=0)
    hedge_floor_ms: float = Field(50.0, gt=0)
    #: Overall budget of one request; each attempt gets what remains.
    verify_deadline_s: float = Field(15.0, gt=0)
    #: Answer before the caller gives up (the Python SDK client waits 90 s).
    settle_deadline_s: float = Field(80.0, gt=0)
    #: Extra verify attempts (failovers, hedges) allowed: this share of recent requests...
    retry_budget_ratio: float = Field(0.2, ge=0)
    #: ...but at least this many per window, so a quiet service can still fail over.
    retry_budget_min: int = Field(10, ge=0)
    retry_budget_window_s: float = Field(10.0, gt=0)
    #: A settle goes first to the upstream that verified the same payment this recently.
    affinity_ttl_s: float = Field(300.0, ge=0)


class OutlierConfig(_Section):
    """Passive ejection from live outcomes (business rejections never count)."""

    consecutive_failures: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    window: int = Field(20, ge=1)
    min_requests: int = Field(10, ge=1)
    base_ejection_s: float = Field(30.0, gt=0)
    max_ejection_s: float = Field(300.0, gt=0)


class HealthConfig(_Section):
    #: How often each upstream's /supported is probed (±10 % jitter); it also refreshes kinds.
    interval_s: float = Field(30.0, gt=0)
    #: First retry interval while an upstream's probes fail (doubles up to ``interval_s``).
    unknown_retry_s: float = Field(2.0, gt=0)
    #: Budget of one /supported probe.
    timeout_s: float = Field(5.0, gt=0)
    #: How long start-up waits for the first round of probes before serving anyway.
    startup_wait_s: float = Field(5.0, ge=0)
    #: Consecutive failed probes that make an upstream unhealthy, and good ones that cure it.
    unhealthy_threshold: int = Field(3, ge=1)
    healthy_threshold: int = Field(2, ge=1)
    outlier: OutlierConfig = OutlierConfig()


class AlertsConfig(_Section):
    #: Where to POST JSON events (upstream state changes, ambiguous settlements). A URL with a
    #: token in it is a secret: prefer ``webhook_url_env``.
    webhook_url: HttpUrl | None = None
    webhook_url_env: str | None = None
    timeout_s: float = Field(5.0, gt=0)
    queue_size: int = Field(100, ge=1)


class AdminConfig(_Section):
    #: Environment variable holding the admin bearer token; without it the admin API is off.
    token_env: str | None = None


class LedgerConfig(_Section):
    """Where every settle is recorded before it is sent (see :mod:`.ledger`)."""

    #: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``
    #: (nothing survives a restart: tests only) or ``postgresql://…`` for several instances.
    url: str = "sqlite:///x402-aggregator-ledger.db"
    #: Environment variable holding the URL instead (a PostgreSQL URL carries a password).
    url_env: str | None = None
    #: Records are kept until the authorization's ``validBefore`` plus this (then purged).
    retention_margin_s: float = Field(7 * 86400.0, ge=0)
    #: How often unresolved settles (ambiguous, pending on chain) are looked at again; each
    #: record backs off exponentially from here.
    resolve_interval_s: float = Field(5.0, gt=0)
    #: An instance whose heartbeat is older than this is presumed dead and its claims free.
    instance_timeout_s: float = Field(10.0, gt=0)
    #: Read the chain through the shipped public RPCs for networks not listed in ``networks``.
    public_rpcs: bool = True
    rpc_timeout_s: float = Field(5.0, gt=0)


class NetworkConfig(_Section):
    """A chain the aggregator may read to resolve ambiguous settles."""

    rpc_url: HttpUrl | None = None
    #: Environment variable holding the RPC URL (most carry an API key).
    rpc_url_env: str | None = None


class DiscoveryConfig(_Section):
    """``GET /discovery/resources``: the upstreams' Bazaar catalogues merged (:mod:`.discovery`)."""

    enabled: bool = True
    #: How long an upstream's catalogue is served before it is fetched again (in the background).
    cache_ttl_s: float = Field(60.0, gt=0)
    #: Items kept per upstream; paging through a catalogue stops here.
    max_items_per_upstream: int = Field(10_000, ge=1)
    #: Pages of 100 fetched per upstream, whatever their size.
    max_pages_per_upstream: int = Field(100, ge=1)
    #: The first request waits at most this long for the first catalogues; later ones never wait.
    first_fill_wait_s: float = Field(5.0, ge=0)
    #: An upstream that answered 404/405/401/403 or garbage is asked again only after this.
    no_discovery_retry_s: float = Field(600.0, gt=0)


# Public facilitators that need no account. x402.org is listed under its canonical www host: the
# SDKs follow a redirect from the bare domain, but we never follow redirects (URLs come only from
# configuration).
DEFAULT_UPSTREAMS: list[dict[str, Any]] = [
    {"name": "x402-org", "url": "https://www.x402.org/facilitator", "priority": 0},
    {"name": "payai", "url": "https://facilitator.payai.network", "priority": 1},
    {"name": "x402-rs", "url": "https://facilitator.x402.rs", "priority": 2},
]


class Config(BaseSettings):
    """The whole configuration; build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    routing: RoutingConfig = RoutingConfig()
    health: HealthConfig = HealthConfig()
    admin: AdminConfig = AdminConfig()
    alerts: AlertsConfig = AlertsConfig()
    ledger: LedgerConfig = LedgerConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    #: By network (CAIP-2 ``eip155:84532`` or a v1 name): where to read the chain.
    networks: dict[str, NetworkConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (which arrives as init kwargs).
        return env_settings, init_settings

    @field_validator("upstreams")
    @classmethod
    def _unique_names(cls, upstreams: list[UpstreamConfig]) -> list[UpstreamConfig]:
        names = [u.name for u in upstreams]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"upstream names must be unique; repeated: {', '.join(duplicates)}")
        if not any(u.enabled for u in upstreams):
            raise ValueError("at least one upstream must be enabled")
        return upstreams


def load_config(source: str | Path | dict[str, Any] | None = None) -> Config:
    """Build the configuration from a YAML path, a mapping, ``$X402_AGGREGATOR_CONFIG`` or defaults.

    Raises :class:`ConfigError` naming the file and the offending field.
    """
    origin = "defaults"
    if source is None and os.environ.get(CONFIG_ENV):
        source = os.environ[CONFIG_ENV]
    if source is None:
        data: dict[str, Any] = {"upstreams": DEFAULT_UPSTREAMS}
    elif isinstance(source, dict):
        data, origin = source, "mapping"
    else:
        origin = str(source)
        data = _read_yaml(Path(source))
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration ({origin}):\n{_describe(exc, data)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must be a mapping at the top level")
    return data


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        lines.append(f"  {_field_path(error['loc'], data)}: {error['msg']}")
    return "\n".join(lines)


def _field_path(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """Render a pydantic location as ``upstreams[0] (primary).url``."""
    path = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                path += f" ({node['name']})"
        elif isinstance(node, dict) and node.get("type") == part and part not in node:
            continue  # a discriminated-union tag ("bearer") adds nothing for a reader
        else:
            path += f".{part}" if path else part
            node = node.get(part) if isinstance(node, dict) else None
    return path or "(top level)"
