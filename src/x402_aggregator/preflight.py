"""Secrets read and tried before anything serves: at start-up, and before a reload is accepted."""

from __future__ import annotations

import os

from .access import access_control
from .aggregator import ledger_url, webhook_url
from .auth import authenticator
from .config import Config
from .errors import ConfigError
from .settlement import chain_readers


def _admin_token(config: Config) -> str | None:
    """The admin bearer token, read once at start; None turns the admin API off."""
    variable = config.admin.token_env
    if variable is None:
        return None
    token = os.environ.get(variable, "")
    if not token:
        raise ConfigError(
            f"admin.token_env names environment variable {variable}, which is not set"
        )
    return token


def check_secrets(config: Config) -> None:
    """Fail now, not in a worker, if a secret the configuration names is not set or unusable."""
    _admin_token(config)
    access_control(config.server)
    webhook_url(config.alerts)
    ledger_url(config)
    chain_readers(config)
    for upstream in config.upstreams:
        if upstream.enabled:
            authenticator(upstream)  # parses keys and signs one token: a bad key stops start-up
