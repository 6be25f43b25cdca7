"""A facilitator that demands the JWT Coinbase CDP or PayAI expects, and checks it as they would.

It is the fake facilitator (real aiohttp server on 127.0.0.1, own thread, same answers and fault
modes) with a gate in front of ``/verify``, ``/settle`` and ``/supported``: every call must carry
``Authorization: Bearer <JWT>`` that passes :meth:`JwtFacilitator.check`, else it gets a 401 JSON
error and never reaches the facilitator logic. What is checked:

- the signature, with the public key given here, and the algorithm that key implies (``ES256``
  for a P-256 key, ``EdDSA`` for Ed25519; ``alg: none`` and any other are refused);
- header ``kid`` and claim ``sub`` equal to the key id, header ``typ: JWT``;
- ``exp`` not passed and ``nbf`` / ``iat`` not in the future (``leeway_s`` of skew allowed), and
  a lifetime of at most 120 s;
- ``cdp``: the claims cdp-sdk's ``generate_jwt`` puts: ``iss: cdp``, ``nbf``, ``exp``, a 16-digit
  header ``nonce``, and ``uris == ["<METHOD> <host:port><path>"]`` naming *this* server and the
  called method and path, so a token minted for ``/verify`` fails on ``/settle``;
- ``payai``: ``iss: payai-merchant``, ``iat``, ``exp``, and ``jti`` a UUID. PayAI tokens name no
  URL, so any endpoint accepts them.

Ops listed in ``public`` skip the gate (a facilitator whose discovery is open, PayAI's free tier).

A ``jti`` is not single-use: PayAI's own clients reuse a token until shortly before it expires
(as the aggregator does), so refusing a repeated ``jti`` would refuse them. CDP tokens carry none.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from typing import Any, Literal

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .fake_facilitator import FakeFacilitator

__all__ = ["JwtFacilitator", "PublicKey", "Scheme"]

Scheme = Literal["cdp", "payai"]
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
MAX_LIFETIME_S = 120
_GATED = {"/verify": "POST", "/settle": "POST", "/supported": "GET"}
_ISSUER: dict[Scheme, str] = {"cdp": "cdp", "payai": "payai-merchant"}
_REQUIRED: dict[Scheme, list[str]] = {
    "cdp": ["sub", "iss", "nbf", "exp", "uris"],
    "payai": ["sub", "iss", "iat", "exp", "jti"],
}
_NONCE = re.compile(r"^[0-9]{16}$")


class JwtFacilitator(FakeFacilitator):
    """A facilitator on 127.0.0.1 that answers like the fake's OK mode, for valid tokens only."""

    def __init__(
        self,
        name: str = "jwt",
        *,
        scheme: Scheme,
        public_key: PublicKey,
        key_id: str,
        leeway_s: float = 0.0,
        public: Collection[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            self.algorithm = "EdDSA"
        elif isinstance(public_key.curve, ec.SECP256R1):
            self.algorithm = "ES256"
        else:
            raise ValueError("the public key must be Ed25519 or EC P-256")
        if scheme == "payai" and self.algorithm != "EdDSA":
            raise ValueError("PayAI keys are Ed25519")
        self.scheme: Scheme = scheme
        self.public_key = public_key
        self.key_id = key_id
        self.leeway_s = leeway_s
        self.public = frozenset(f"/{op}" for op in public)
        self.accepted = 0
        self.rejected = 0
        #: Why each refused call was refused, in order (e.g. "expired", "wrong_uri").
        self.rejections: list[str] = []
        #: Every bearer token received, so tests can check none leaks anywhere.
        self.tokens: list[str] = []

    def start(self) -> JwtFacilitator:
        super().start()
        return self

    def __enter__(self) -> JwtFacilitator:
        return self.start()

    def __repr__(self) -> str:
        return f"JwtFacilitator({self.name!r}, scheme={self.scheme!r}, url={self.url!r})"

    @property
    def authority(self) -> str:
        """``host:port`` as CDP tokens must name it."""
        return self.url.removeprefix("http://")

    def reset_counts(self) -> None:
        with self._lock:
            self.accepted = self.rejected = 0
            self.rejections.clear()
            self.tokens.clear()

    def check(self, method: str, path: str, authorization: str | None) -> str | None:
        """None if ``authorization`` lets ``method path`` through, else why not (a short code)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "missing_token"
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            return "malformed_token"
        if header.get("alg") != self.algorithm:
            return "wrong_algorithm"
        if header.get("typ") != "JWT":
            return "wrong_type"
        if header.get("kid") != self.key_id:
            return "unknown_key"
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=[self.algorithm],
                issuer=_ISSUER[self.scheme],
                leeway=self.leeway_s,
                options={"require": _REQUIRED[self.scheme]},
            )
        except jwt.ExpiredSignatureError:
            return "expired"
        except jwt.ImmatureSignatureError:
            return "not_yet_valid"
        except jwt.InvalidIssuerError:
            return "wrong_issuer"
        except jwt.MissingRequiredClaimError as exc:
            return f"missing_claim_{exc.claim}"
        except jwt.InvalidSignatureError:
            return "bad_signature"
        except jwt.InvalidTokenError:
            return "invalid_token"
        if claims["sub"] != self.key_id:
            return "wrong_subject"
        if self.scheme == "cdp":
            return self._check_cdp(method, path, header, claims)
        return self._check_payai(claims)

    def _check_cdp(
        self, method: str, path: str, header: dict[str, Any], claims: dict[str, Any]
    ) -> str | None:
        if not isinstance(header.get("nonce"), str) or not _NONCE.match(header["nonce"]):
            return "bad_nonce"
        if not _lifetime_ok(claims["nbf"], claims["exp"]):
            return "lifetime_too_long"
        if claims["uris"] != [f"{method} {self.authority}{path}"]:
            return "wrong_uri"
        return None

    def _check_payai(self, claims: dict[str, Any]) -> str | None:
        if not _lifetime_ok(claims["iat"], claims["exp"]):
            return "lifetime_too_long"
        try:
            uuid.UUID(str(claims["jti"]))
        except ValueError:
            return "bad_jti"
        return None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        expected = _GATED.get(request.path)
        if expected is None or request.method != expected or request.path in self.public:
            return await super()._handle(request)  # control API, 404, 405, public ops
        authorization = request.headers.get("Authorization")
        reason = self.check(request.method, request.path, authorization)
        with self._lock:
            if authorization:
                self.tokens.append(authorization.partition(" ")[2].strip())
            if reason is None:
                self.accepted += 1
            else:
                self.rejected += 1
                self.rejections.append(reason)
        if reason is None:
            return await super()._handle(request)
        await request.read()
        return self._json(
            401,
            {"errorType": "unauthorized", "errorMessage": f"invalid credentials: {reason}"},
            {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'},
        )


def _lifetime_ok(start: Any, end: Any) -> bool:
    return isinstance(start, int) and isinstance(end, int) and 0 < end - start <= MAX_LIFETIME_S
