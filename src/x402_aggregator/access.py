"""Who may call the facilitator API: API keys read once at start, and a token bucket per key.

Off by default. ``server.api_keys_env`` names an environment variable holding
``name:key,name:key``: the key is the caller's secret, the name a label for logs and metrics
(bounded: names come only from configuration, so an attacker cannot grow a metric or a table).
Only ``/verify``, ``/settle`` and ``/supported`` are guarded; the admin API has its own token.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import metrics
from .config import ServerConfig
from .errors import ConfigError

UNAUTHORIZED = "unauthorized"
RATE_LIMITED = "rate_limited"
#: The ``key`` label of a refusal when no configured key was presented.
NO_KEY = "-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A header value may carry visible ASCII only; a comma would split the variable's pairs.
_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]+$")
_MISSING = "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
_WRONG = "the API key is not recognised"

# Refusals go to the access log, like answered requests (the key's name, never the key).
access_log = logging.getLogger("x402_aggregator.access")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is turned away before anything is read or forwarded."""

    status: int
    reason: str
    message: str
    #: The configured name of the caller's key, if it presented a valid one.
    key: str | None = None
    #: Extra response headers (``WWW-Authenticate`` or ``Retry-After``).
    headers: tuple[tuple[bytes, bytes], ...] = ()


class TokenBucket:
    """``rate`` requests per second on average, up to ``burst`` at once after a quiet spell."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Spend one token: 0.0 if there was one, else the seconds until there will be."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


class AccessControl:
    """The known keys (by digest) and, if a rate is set, one bucket per key name."""

    def __init__(
        self,
        keys: Mapping[str, str],
        rate_per_s: float | None = None,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``keys`` maps each name to its key; the keys themselves are not kept."""
        # Looking up sha256(supplied key) in a dict of sha256(known key) takes no longer for a
        # nearly right key than for a wildly wrong one: the dict compares digests, and a caller
        # cannot choose a key whose digest shares a prefix with a known one. Comparing the
        # keys themselves with == would return sooner the earlier they differ, a timing oracle.
        self._names = {_digest(key.encode()): name for name, key in keys.items()}
        self._clock = clock
        self._rate = rate_per_s
        self._buckets: dict[str, TokenBucket] = {}
        if rate_per_s is not None:
            now = clock()
            self._buckets = {name: TokenBucket(rate_per_s, burst, now) for name in keys}

    def check(self, authorization: bytes | None, api_key: bytes | None) -> str | Refusal:
        """The caller's key name, or why the call is refused (counted in metrics).

        ``authorization`` and ``api_key`` are the raw ``Authorization`` and ``X-API-Key``
        header values; a ``Bearer`` authorization wins over ``X-API-Key``.
        """
        supplied = api_key
        if authorization is not None:
            scheme, _, token = authorization.partition(b" ")
            if scheme.lower() == b"bearer":
                supplied = token.strip()
        if not supplied:
            return _refuse(Refusal(401, UNAUTHORIZED, _MISSING, None, _CHALLENGE))
        name = self._names.get(_digest(supplied))
        if name is None:
            return _refuse(Refusal(401, UNAUTHORIZED, _WRONG, None, _CHALLENGE))
        if self._rate is None:
            return name
        wait = self._buckets[name].take(self._clock())
        if not wait:
            return name
        retry_after = max(1, math.ceil(wait))
        message = (
            f"this API key is limited to {self._rate:g} requests per second; "
            f"retry after {retry_after} s"
        )
        headers = ((b"retry-after", str(retry_after).encode()),)
        return _refuse(Refusal(429, RATE_LIMITED, message, name, headers))


_CHALLENGE = ((b"www-authenticate", b"Bearer"),)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _refuse(refusal: Refusal) -> Refusal:
    metrics.record_refusal(refusal.reason, refusal.key or NO_KEY)
    return refusal


def log_refusal(refusal: Refusal, path: str, request_id: str | None) -> None:
    """One access-log line per refused call: the key's name if it had a valid one, no key."""
    if access_log.isEnabledFor(logging.INFO):
        fields = {
            "request_id": request_id,
            "path": path,
            "outcome": refusal.reason,
            "status": refusal.status,
            "key": refusal.key,
        }
        access_log.info("%s %s", path, refusal.reason, extra={"fields": fields})


def access_control(server: ServerConfig, secrets: Mapping[str, str]) -> AccessControl | None:
    """Read the API keys named by ``server.api_keys_env``; None when access control is off.

    Raises :class:`ConfigError` naming the variable (and the position of a bad entry), never
    quoting its content: a malformed entry may be a key.
    """
    variable = server.api_keys_env
    if variable is None:
        return None
    return AccessControl(
        parse_keys(variable, secrets.get(variable, "")),
        server.rate_limit_per_s,
        server.rate_limit_burst,
    )


def parse_keys(variable: str, value: str) -> dict[str, str]:
    """``name:key,name:key`` as {name: key}; ``variable`` is only for error messages."""
    where = f"server.api_keys_env names environment variable {variable}"
    if not value.strip():
        raise ConfigError(f"{where}, which is not set or empty")
    keys: dict[str, str] = {}
    seen: set[str] = set()
    for n, entry in enumerate(value.split(","), start=1):
        name, colon, key = (part.strip() for part in entry.partition(":"))
        if not colon or not key:
            raise ConfigError(f"{where}: entry {n} is not name:key")
        if not _NAME.match(name):
            raise ConfigError(
                f"{where}: the name of entry {n} must be 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if not _KEY.match(key):
            raise ConfigError(f"{where}: the key of entry {n} must be visible ASCII, no commas")
        if name in keys:
            raise ConfigError(f"{where}: entry {n} repeats the name of an earlier entry")
        if key in seen:
            raise ConfigError(f"{where}: entry {n} repeats the key of an earlier entry")
        keys[name] = key
        seen.add(key)
    return keys
