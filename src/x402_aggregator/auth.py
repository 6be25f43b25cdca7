"""Credentials an upstream needs: resolved once at start (by :mod:`.secrets`) and checked there.

Each upstream gets an :class:`Authenticator` whose :meth:`~Authenticator.headers` is asked for
every request. Static kinds (none, ``bearer``, ``header``) answer one constant mapping, which
:class:`~.upstream.Upstream` merges once. Token kinds sign a short-lived JWT:

- ``cdp``: a Coinbase CDP API-key JWT (ES256 or Ed25519 by key type, 120 s) bound to the request's
  method, host and path, signed by cdp-sdk's own helper (optional extra ``x402-aggregator[cdp]``);
- ``payai``: a PayAI merchant JWT (Ed25519, ``iss: payai-merchant``, 120 s, not bound to a URL).

A token is reused for the same (method, URL) until :data:`REFRESH_BEFORE_S` before it expires, so
the hot path signs about once a minute and a half per endpoint, not per request. Keys are parsed
at construction: a bad or missing one is a :class:`~.errors.ConfigError` naming the upstream and
the variable, never the value. Secrets and tokens never appear in an error, a log line or a repr.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from ._types import Clock
from .config import BearerAuth, CdpAuth, HeaderAuth, PayaiAuth, UpstreamConfig
from .errors import ConfigError, SigningError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "REFRESH_BEFORE_S",
    "TOKEN_TTL_S",
    "Authenticator",
    "CdpAuthenticator",
    "PayaiAuthenticator",
    "SigningError",
    "StaticAuthenticator",
    "auth_headers",
    "authenticator",
]

#: Lifetime of a minted JWT (what CDP and PayAI expect).
TOKEN_TTL_S = 120
#: A cached token is replaced this long before it expires (clock skew, slow upstreams).
REFRESH_BEFORE_S = 30
PAYAI_ISSUER = "payai-merchant"
PAYAI_SECRET_PREFIX = "payai_sk_"  # noqa: S105 - a marker, not a secret
#: The ``source`` / ``source_version`` cdp-sdk's own x402 facilitator config reports
#: (``cdp.x402.x402.X402_VERSION``; not imported: importing ``cdp.x402`` prints a notice).
_CDP_SOURCE = "x402"
_CDP_SOURCE_VERSION = "2.0.0"
#: Distinct (method, URL) pairs cached per upstream; an upstream uses three.
_CACHE_LIMIT = 32


class Authenticator(ABC):
    """The credential headers for each request to one upstream."""

    kind: ClassVar[str]
    #: ``headers`` answers one constant mapping whatever the request (merge it once).
    static: ClassVar[bool] = False

    @abstractmethod
    def headers(self, method: str, url: str) -> Mapping[str, str]:
        """The headers that authenticate ``method url``; never log them."""


class StaticAuthenticator(Authenticator):
    """No credentials, or headers computed once (``bearer``, ``header``)."""

    kind = "static"
    static = True

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        self._headers: Mapping[str, str] = dict(headers or {})

    def headers(self, method: str, url: str) -> Mapping[str, str]:
        return self._headers

    def __repr__(self) -> str:
        return f"StaticAuthenticator(headers={sorted(self._headers)!r})"


class _TokenAuthenticator(Authenticator):
    """Mints JWTs and reuses each for its (method, URL) until shortly before it expires."""

    #: Tokens name the request's method and URL; else one token serves every request.
    bound: ClassVar[bool] = True

    def __init__(self, upstream: str, *, clock: Clock, reuse_tokens: bool) -> None:
        self.upstream = upstream
        self._clock = clock
        self._reuse = reuse_tokens
        self._cache: dict[tuple[str, str], tuple[float, Mapping[str, str]]] = {}

    def headers(self, method: str, url: str) -> Mapping[str, str]:
        key = (method, url) if self.bound else ("", "")
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            headers = self._mint(method, url, now)
        except Exception as exc:
            # The cause may quote the key (or a library's view of it): only its type is kept.
            raise SigningError(
                f"upstream {self.upstream!r}: could not sign a {self.kind} token "
                f"({type(exc).__name__})"
            ) from None
        if self._reuse:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = (now + TOKEN_TTL_S - REFRESH_BEFORE_S, headers)
        return headers

    @abstractmethod
    def _mint(self, method: str, url: str, now: float) -> Mapping[str, str]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(upstream={self.upstream!r})"


class CdpAuthenticator(_TokenAuthenticator):
    """Coinbase CDP: a JWT per (method, host, path), minted by cdp-sdk's ``generate_jwt``.

    ``cdp.x402.create_facilitator_config`` hard-codes CDP's own host and paths; its building
    blocks, called directly, bind the token to this upstream's real URL. At start
    ``get_auth_headers`` (what that config calls) signs once, which checks the key and gives the
    ``Correlation-Context`` header the SDK's facilitator client sends; per request only
    ``generate_jwt`` runs (``get_auth_headers`` rereads cdp-sdk's package metadata every call).
    """

    kind = "cdp"

    def __init__(
        self,
        upstream: str,
        key_id: str,
        key_secret: str,
        *,
        base_url: str,
        secret_variable: str,
        clock: Clock = time.time,
        reuse_tokens: bool = True,
    ) -> None:
        super().__init__(upstream, clock=clock, reuse_tokens=reuse_tokens)
        try:
            # cdp-sdk is heavy (solana, solders, web3) and slow to import: only when configured.
            import jwt
            from cdp.auth.utils.http import GetAuthHeadersOptions, get_auth_headers
            from cdp.auth.utils.jwt import JwtOptions, generate_jwt
        except ImportError:
            raise ConfigError(
                f"upstream {upstream!r}: auth type cdp needs cdp-sdk, which is not installed; "
                "install x402-aggregator[cdp]"
            ) from None
        self._options: Any = JwtOptions
        self._generate_jwt: Any = generate_jwt
        self._key_id = key_id
        self._key_secret = key_secret
        # Sign once now: a key cdp-sdk cannot use fails start-up, not the first payment. The
        # helper joins host and path with urlparse, which reads "localhost:4021/verify" as a
        # scheme and a path; "//host" keeps such a host whole. Keep the form that binds right.
        authority, path = _authority_and_path(f"{base_url}/verify")
        expected = [f"POST {authority}{path}"]
        for prefix in ("", "//"):
            try:
                headers = get_auth_headers(
                    GetAuthHeadersOptions(
                        api_key_id=key_id,
                        api_key_secret=key_secret,
                        request_method="POST",
                        request_host=prefix + authority,
                        request_path=path,
                        source=_CDP_SOURCE,
                        source_version=_CDP_SOURCE_VERSION,
                    )
                )
            except Exception:
                raise ConfigError(
                    f"upstream {upstream!r}: auth.key_secret_env names environment variable "
                    f"{secret_variable}, whose value is not a CDP API key secret "
                    "(an EC private key in PEM, or a base64 Ed25519 key)"
                ) from None
            token = str(headers["Authorization"]).removeprefix("Bearer ")
            if jwt.decode(token, options={"verify_signature": False}).get("uris") == expected:
                self._host_prefix = prefix
                self._correlation = str(headers["Correlation-Context"])
                return
        raise ConfigError(  # pragma: no cover - only if a cdp-sdk release changes its binding
            f"upstream {upstream!r}: cdp-sdk does not bind tokens to {expected[0]!r}"
        )

    def _mint(self, method: str, url: str, now: float) -> Mapping[str, str]:
        authority, path = _authority_and_path(url)
        token = self._generate_jwt(
            self._options(
                api_key_id=self._key_id,
                api_key_secret=self._key_secret,
                request_method=method,
                request_host=self._host_prefix + authority,
                request_path=path,
                expires_in=TOKEN_TTL_S,
            )
        )
        return {"Authorization": f"Bearer {token}", "Correlation-Context": self._correlation}


class PayaiAuthenticator(_TokenAuthenticator):
    """PayAI: an EdDSA JWT signed with the merchant's Ed25519 key (protocol doc §6.3)."""

    kind = "payai"
    bound = False

    def __init__(
        self,
        upstream: str,
        key_id: str,
        key_secret: str,
        *,
        secret_variable: str,
        clock: Clock = time.time,
        reuse_tokens: bool = True,
    ) -> None:
        super().__init__(upstream, clock=clock, reuse_tokens=reuse_tokens)
        import jwt

        self._encode = jwt.encode
        self._key_id = key_id
        try:
            self._key = parse_payai_secret(key_secret)
        except ValueError:
            raise ConfigError(
                f"upstream {upstream!r}: auth.key_secret_env names environment variable "
                f"{secret_variable}, whose value is not a base64 PKCS#8 Ed25519 private key "
                f"(optionally prefixed {PAYAI_SECRET_PREFIX})"
            ) from None

    def _mint(self, method: str, url: str, now: float) -> Mapping[str, str]:
        issued = int(now)
        claims = {
            "sub": self._key_id,
            "iss": PAYAI_ISSUER,
            "iat": issued,
            "exp": issued + TOKEN_TTL_S,
            "jti": str(uuid.uuid4()),
        }
        token = self._encode(claims, self._key, algorithm="EdDSA", headers={"kid": self._key_id})
        return {"Authorization": f"Bearer {token}"}


def parse_payai_secret(secret: str) -> Ed25519PrivateKey:
    """The Ed25519 key in a PayAI secret (base64 PKCS#8 DER, optional ``payai_sk_`` prefix).

    Raises ``ValueError`` whose message never quotes the secret.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    text = secret.strip().removeprefix(PAYAI_SECRET_PREFIX)
    text += "=" * (-len(text) % 4)
    try:
        altchars = b"-_" if "-" in text or "_" in text else None
        der = base64.b64decode(text, altchars, validate=True)
        key = load_der_private_key(der, password=None)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("not a base64 PKCS#8 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 key")
    return key


def authenticator(
    upstream: UpstreamConfig,
    secrets: Mapping[str, str],
    *,
    reuse_tokens: bool = True,
) -> Authenticator:
    """Build ``upstream``'s authenticator; a missing or unusable secret raises ConfigError.

    ``secrets`` holds the values of the variables its ``auth`` names, by variable (see
    :mod:`.secrets`).
    """
    auth = upstream.auth
    if auth is None or isinstance(auth, BearerAuth | HeaderAuth):
        return StaticAuthenticator(auth_headers(upstream, secrets))
    key_id = _secret(upstream, "key_id_env", auth.key_id_env, secrets)
    key_secret = _secret(upstream, "key_secret_env", auth.key_secret_env, secrets)
    if isinstance(auth, CdpAuth):
        return CdpAuthenticator(
            upstream.name,
            key_id,
            key_secret,
            base_url=upstream.base_url,
            secret_variable=auth.key_secret_env,
            reuse_tokens=reuse_tokens,
        )
    if isinstance(auth, PayaiAuth):
        return PayaiAuthenticator(
            upstream.name,
            key_id,
            key_secret,
            secret_variable=auth.key_secret_env,
            reuse_tokens=reuse_tokens,
        )
    raise ConfigError(f"upstream {upstream.name!r}: unsupported auth type")  # pragma: no cover


def auth_headers(upstream: UpstreamConfig, secrets: Mapping[str, str]) -> dict[str, str]:
    """The constant headers of a static kind (none, bearer, header); never log the result.

    Token kinds (cdp, payai) sign per request: use :func:`authenticator`.
    """
    auth = upstream.auth
    if auth is None:
        return {}
    if isinstance(auth, BearerAuth):
        return {
            "Authorization": f"Bearer {_secret(upstream, 'token_env', auth.token_env, secrets)}"
        }
    if isinstance(auth, HeaderAuth):
        return {auth.name: _secret(upstream, "value_env", auth.value_env, secrets)}
    raise ConfigError(
        f"upstream {upstream.name!r}: auth type {auth.type} signs each request; "
        "it has no static headers"
    )


def _secret(upstream: UpstreamConfig, field: str, variable: str, secrets: Mapping[str, str]) -> str:
    # Read and stripped by .secrets already; stripped again for mappings built by hand.
    value = secrets.get(variable, "").strip()
    if not value:
        raise ConfigError(
            f"upstream {upstream.name!r}: auth.{field} names environment variable {variable}, "
            "which is not set"
        )
    return value


def _authority_and_path(url: str) -> tuple[str, str]:
    """``host[:port]`` (default ports dropped, as a Host header has them) and the path."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and (parts.scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return host, parts.path or "/"
