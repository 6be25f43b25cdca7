"""Credentials an upstream needs, resolved from the environment once, at start."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .config import BearerAuth, HeaderAuth, UpstreamConfig
from .errors import ConfigError


def auth_headers(
    upstream: UpstreamConfig, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """Return the headers that authenticate us to ``upstream``; never log the result."""
    auth = upstream.auth
    if auth is None:
        return {}
    if isinstance(auth, BearerAuth):
        return {
            "Authorization": f"Bearer {_secret(upstream, 'token_env', auth.token_env, environ)}"
        }
    if isinstance(auth, HeaderAuth):
        return {auth.name: _secret(upstream, "value_env", auth.value_env, environ)}
    raise ConfigError(f"upstream {upstream.name!r}: unsupported auth type")  # pragma: no cover


def _secret(upstream: UpstreamConfig, field: str, variable: str, environ: Mapping[str, str]) -> str:
    # Secrets mounted from files often end in a newline, which no HTTP header may carry.
    value = environ.get(variable, "").strip()
    if not value:
        raise ConfigError(
            f"upstream {upstream.name!r}: auth.{field} names environment variable {variable}, "
            "which is not set"
        )
    return value
