"""Every secret the configuration names, read from the environment in one step at start.

The file never holds a secret: it names the variable that does (``token_env``, ``url_env``,
``api_keys_env``, ...). :func:`read_secrets` finds every such ``*_env`` field in use, reads
them all and fails at once, naming the field and the variable (never a value), when one is
unset or empty. Everything else takes its secrets from the :class:`Secrets` it returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from .access import access_control
from .auth import authenticator
from .chains import PUBLIC_RPCS, readers
from .config import Config, UpstreamConfig
from .errors import ConfigError
from .networks import caip2

ENV_SUFFIX = "_env"
#: Sections only the HTTP service reads.
SERVICE_SECTIONS = frozenset({"server", "admin"})


@dataclass(frozen=True, slots=True)
class Secrets:
    """The values of the variables a configuration names, and what they stand for."""

    config: Config = field(repr=False)
    #: By variable name; never logged (the repr shows only the names).
    values: Mapping[str, str] = field(repr=False)

    def __repr__(self) -> str:
        return f"Secrets(variables={sorted(self.values)})"

    @property
    def ledger_url(self) -> str:
        """The ledger's URL, from the file or (for URLs with a password) the environment."""
        variable = self.config.ledger.url_env
        return self.values[variable] if variable else self.config.ledger.url

    @property
    def webhook_url(self) -> str | None:
        """The alert webhook, from the file or (for URLs that carry a token) the environment."""
        alerts = self.config.alerts
        if alerts.webhook_url_env:
            return self.values[alerts.webhook_url_env]
        return str(alerts.webhook_url) if alerts.webhook_url else None

    @property
    def admin_token(self) -> str | None:
        """The admin bearer token; None turns the admin API off."""
        variable = self.config.admin.token_env
        return self.values[variable] if variable else None

    @property
    def rpc_urls(self) -> dict[str, str]:
        """Chain RPCs by CAIP-2 network: the configured ones, else (unless off) the public ones."""
        urls: dict[str, str] = dict(PUBLIC_RPCS) if self.config.ledger.public_rpcs else {}
        for network, entry in self.config.networks.items():
            if entry.rpc_url_env:
                urls[caip2(network)] = self.values[entry.rpc_url_env]
            elif entry.rpc_url:
                urls[caip2(network)] = str(entry.rpc_url)
        return urls


def read_secrets(
    config: Config, environ: Mapping[str, str] = os.environ, *, server: bool = True
) -> Secrets:
    """Read every variable the configuration names; ConfigError for the first one missing.

    ``server=False`` leaves out what only the HTTP service uses (API keys, the admin token):
    the engine embedded in a resource server shares the service's file, not its environment.
    """
    return Secrets(config, _read(_variables(config, server), environ))


def check_secrets(config: Config) -> Secrets:
    """Fail now, not in a worker, if a secret the configuration names is unset or unusable."""
    secrets = read_secrets(config)
    access_control(config.server, secrets.values)
    readers(secrets.rpc_urls, timeout_s=config.ledger.rpc_timeout_s)  # every RPC URL is usable
    for upstream in config.upstreams:
        if upstream.enabled:
            authenticator(upstream, secrets.values)  # parses keys, signs one token
    return secrets


def upstream_secrets(
    upstream: UpstreamConfig, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The variables one upstream's ``auth`` names, read (for an upstream built on its own)."""
    return _read(_fields(upstream, f"upstream {upstream.name!r}: "), environ)


def _read(named: Iterator[tuple[str, str]], environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for where, variable in named:
        # Secrets mounted from files often end in a newline, which no HTTP header may carry.
        value = environ.get(variable, "").strip()
        if not value:
            raise ConfigError(f"{where} names environment variable {variable}, which is not set")
        values[variable] = value
    return values


def _variables(config: Config, server: bool) -> Iterator[tuple[str, str]]:
    """(where, variable) for every ``*_env`` field in use; disabled upstreams need none."""
    for name in type(config).model_fields:
        value = getattr(config, name)
        if name in SERVICE_SECTIONS and not server:
            continue
        if name == "upstreams":
            for upstream in value:
                if upstream.enabled:
                    yield from _fields(upstream, f"upstream {upstream.name!r}: ")
        elif name == "networks":
            for network, entry in value.items():
                yield from _fields(entry, f"networks.{network}.")
        elif isinstance(value, BaseModel):
            yield from _fields(value, f"{name}.")


def _fields(model: BaseModel, prefix: str) -> Iterator[tuple[str, str]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _fields(value, f"{prefix}{name}.")
        elif name.endswith(ENV_SUFFIX) and isinstance(value, str):
            yield f"{prefix}{name}", value
