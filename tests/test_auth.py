"""Per-upstream authentication: CDP and PayAI JWTs, proven against a server that validates them.

Keys are throwaway ones made here; the aggregator runs on real sockets in front of
:class:`JwtFacilitator`, which checks signature, claims, URL binding and expiry as CDP and PayAI do.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from x402_aggregator.auth import (
    REFRESH_BEFORE_S,
    TOKEN_TTL_S,
    CdpAuthenticator,
    PayaiAuthenticator,
    StaticAuthenticator,
    auth_headers,
    authenticator,
)
from x402_aggregator.config import CdpAuth, PayaiAuth, UpstreamConfig, load_config
from x402_aggregator.errors import ConfigError, SigningError
from x402_aggregator.localnet.jwt_facilitator import JwtFacilitator, PublicKey, Scheme
from x402_aggregator.localnet.live import free_port
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.protocol import parse_request
from x402_aggregator.secrets import check_secrets
from x402_aggregator.transport import HandlerTransport, UpstreamRequest, UpstreamResponse
from x402_aggregator.upstream import Upstream

from .conftest import AggregatorFactory, FakeClock, FakeFactory, upstream_entry

KEY_ID = "organizations/0000/apiKeys/test-key"
CDP_URL = "https://api.cdp.coinbase.com/platform/v2/x402"


@dataclass(frozen=True)
class Key:
    """A throwaway key: the secret as its env variable holds it, and the public half."""

    scheme: Scheme
    secret: str
    public: PublicKey
    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

    @property
    def algorithm(self) -> str:
        return "ES256" if isinstance(self.private, ec.EllipticCurvePrivateKey) else "EdDSA"


def cdp_es256() -> Key:
    """An ECDSA P-256 CDP key: SEC1 PEM, as the CDP portal hands it out."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    return Key("cdp", pem.decode(), private.public_key(), private)


def cdp_ed25519() -> Key:
    """An Ed25519 CDP key: base64 of seed and public key (64 bytes)."""
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    public = private.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return Key("cdp", base64.b64encode(raw + public).decode(), private.public_key(), private)


def payai_key(prefix: str = "payai_sk_") -> Key:
    """A PayAI merchant key: base64 PKCS#8 DER Ed25519, with the ``payai_sk_`` prefix."""
    private = ed25519.Ed25519PrivateKey.generate()
    der = private.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return Key("payai", prefix + base64.b64encode(der).decode(), private.public_key(), private)


KEYS: dict[str, Callable[[], Key]] = {
    "cdp-es256": cdp_es256,
    "cdp-ed25519": cdp_ed25519,
    "payai": payai_key,
    "payai-bare": lambda: payai_key(prefix=""),
}
ENV = {
    "cdp": ("CDP_API_KEY_ID", "CDP_API_KEY_SECRET"),
    "payai": ("PAYAI_API_KEY_ID", "PAYAI_API_KEY_SECRET"),
}
JwtFactory = Callable[..., JwtFacilitator]


@pytest.fixture
def jwt_fakes() -> Iterator[JwtFactory]:
    """Start validating facilitators on free ports; all are stopped after the test."""
    started: list[JwtFacilitator] = []

    def make(key: Key, name: str = "jwt", **kwargs: Any) -> JwtFacilitator:
        kwargs.setdefault("key_id", KEY_ID)
        server = JwtFacilitator(name, scheme=key.scheme, public_key=key.public, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def use_key(monkeypatch: pytest.MonkeyPatch, key: Key) -> dict[str, str]:
    """Put ``key`` in the environment under its kind's default variables; the auth entry."""
    id_var, secret_var = ENV[key.scheme]
    monkeypatch.setenv(id_var, KEY_ID)
    monkeypatch.setenv(secret_var, key.secret)
    return {"type": key.scheme}


def entry(server: JwtFacilitator, priority: int = 0, **overrides: Any) -> dict[str, Any]:
    return upstream_entry(f"{server.name}={server.url}", priority, **overrides)


def sign(key: Key, claims: dict[str, Any], **header: Any) -> str:
    """A token signed by ``key`` with exactly these claims (for what the aggregator never sends)."""
    if key.scheme == "cdp":
        header = {"nonce": "1234567890123456", **header}
    return jwt.encode(
        claims, key.private, algorithm=key.algorithm, headers={"kid": KEY_ID, **header}
    )


def claims_for(
    key: Key, server: JwtFacilitator, method: str, path: str, now: int
) -> dict[str, Any]:
    """The claims cdp-sdk or PayAI's clients put in a token, issued at ``now``."""
    if key.scheme == "cdp":
        uri = f"{method} {server.authority}{path}"
        return {
            "sub": KEY_ID,
            "iss": "cdp",
            "aud": None,
            "nbf": now,
            "exp": now + 120,
            "uris": [uri],
        }
    return {
        "sub": KEY_ID,
        "iss": "payai-merchant",
        "iat": now,
        "exp": now + 120,
        "jti": "6f1f4a7e-3d55-4c8b-9a8e-0b3c2b1d9e77",
    }


def secret_fragments(secret: str) -> list[str]:
    """The parts of a secret that must never show: its base64 lines (PEM armour aside)."""
    lines = secret.removeprefix("payai_sk_").splitlines()
    return [line for line in lines if line and not line.startswith("-----")]


def post(server: JwtFacilitator, path: str, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{server.url}{path}", json=v2_body(), headers=headers, timeout=5.0)


# --- through the aggregator ------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KEYS))
def test_verify_settle_and_supported_pass_a_validating_server(
    kind: str,
    jwt_fakes: JwtFactory,
    aggregator: AggregatorFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every call the aggregator makes carries a token the upstream accepts."""
    key = KEYS[kind]()
    server = jwt_fakes(key)
    agg = aggregator(entry(server, auth=use_key(monkeypatch, key)))

    verified = agg.post("/verify", v2_body())
    settled = agg.post("/settle", v2_body())

    assert verified.status_code == 200, verified.text
    assert verified.json()["isValid"] is True
    assert verified.headers["X-Aggregator-Upstream"] == "jwt"
    assert settled.status_code == 200, settled.text
    assert settled.json()["success"] is True
    assert server.rejections == []
    assert server.calls["supported"] >= 1  # the start-up probe was let in too
    assert server.accepted == sum(server.calls.values())
    if key.scheme == "cdp":
        context = {r.headers.get("correlation-context") for r in server.received}
        assert context == {
            "sdk_version=1.51.0,sdk_language=python,source=x402,source_version=2.0.0"
        }


@pytest.mark.parametrize("kind", ["cdp-es256", "payai"])
def test_a_refused_token_fails_verify_over_and_leaks_nowhere(
    kind: str,
    jwt_fakes: JwtFactory,
    fakes: FakeFactory,
    aggregator: AggregatorFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 401 for our key sends the verify to the next upstream; no token shows anywhere."""
    caplog.set_level(logging.DEBUG)
    ours, theirs = KEYS[kind](), KEYS[kind]()
    # /supported is open, as on a free tier: only verify tells that the key is not theirs.
    server = jwt_fakes(theirs, public=("supported",))
    backup = fakes("backup")
    auth = use_key(monkeypatch, ours)
    agg = aggregator(entry(server, 0, auth=auth), upstream_entry(backup, 1))
    alone = aggregator(entry(server, 0, auth=auth))

    failed_over = agg.post("/verify", v2_body())
    refused = alone.post("/verify", v2_body())
    status = agg.client.get("/status")
    metrics = agg.client.get("/metrics")

    assert failed_over.status_code == 200
    assert failed_over.headers["X-Aggregator-Upstream"] == "backup"
    assert refused.status_code >= 400
    assert server.rejections == ["bad_signature", "bad_signature"]
    primary = {u["name"]: u for u in status.json()["upstreams"]}["jwt"]
    assert (
        primary["last_error"] == "HTTP 401: the upstream refused our credentials (check its auth)"
    )
    assert "refused our credentials" in refused.json()["invalidMessage"]
    tokens = server.tokens
    assert len(tokens) == 2
    for text in (failed_over.text, refused.text, status.text, metrics.text, caplog.text):
        for token in tokens:
            assert token not in text
            assert token.split(".")[2] not in text  # not even the signature
        for fragment in secret_fragments(ours.secret):
            assert fragment not in text


def test_a_settle_token_is_fresh_per_endpoint_and_reused_within_its_lifetime(
    jwt_fakes: JwtFactory, aggregator: AggregatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CDP tokens name their endpoint: /verify and /settle get different ones, each reused."""
    key = cdp_ed25519()
    server = jwt_fakes(key)
    agg = aggregator(entry(server, auth=use_key(monkeypatch, key)))
    server.reset_counts()

    for _ in range(3):
        assert agg.post("/verify", v2_body()).status_code == 200
        assert agg.post("/settle", v2_body()).status_code == 200

    uris = [jwt.decode(t, options={"verify_signature": False})["uris"] for t in server.tokens]
    assert server.accepted == 6
    assert len(set(server.tokens)) == 2
    assert {u[0] for u in uris} == {
        f"POST {server.authority}/verify",
        f"POST {server.authority}/settle",
    }


# --- what the validating server refuses -------------------------------------------------------


@pytest.mark.parametrize("kind", list(KEYS))
def test_the_server_refuses_a_wrong_key_an_expired_token_and_no_token(
    kind: str, jwt_fakes: JwtFactory
) -> None:
    """Another key's signature, a token past exp and a missing token all get 401."""
    key, other = KEYS[kind](), KEYS[kind]()
    server = jwt_fakes(key)
    now = int(time.time())

    good = post(server, "/verify", sign(key, claims_for(key, server, "POST", "/verify", now)))
    wrong_key = post(
        server, "/verify", sign(other, claims_for(key, server, "POST", "/verify", now))
    )
    expired = post(
        server, "/verify", sign(key, claims_for(key, server, "POST", "/verify", now - 300))
    )
    missing = post(server, "/verify", None)
    wrong_kid = post(
        server, "/verify", sign(key, claims_for(key, server, "POST", "/verify", now), kid="other")
    )

    assert good.status_code == 200
    for refused in (wrong_key, expired, missing, wrong_kid):
        assert refused.status_code == 401
        assert refused.headers["Content-Type"].startswith("application/json")
        assert refused.json()["errorType"] == "unauthorized"
    assert server.rejections == ["bad_signature", "expired", "missing_token", "unknown_key"]
    assert (server.accepted, server.rejected) == (1, 4)
    assert server.calls["verify"] == 1  # refused calls never reach the facilitator logic


@pytest.mark.parametrize("kind", ["cdp-es256", "cdp-ed25519"])
def test_a_cdp_token_is_bound_to_its_method_host_and_path(kind: str, jwt_fakes: JwtFactory) -> None:
    """A token minted for /verify fails on /settle, on another host and for another method."""
    key = KEYS[kind]()
    server = jwt_fakes(key)
    auth = CdpAuthenticator(
        "jwt", KEY_ID, key.secret, base_url=server.url, secret_variable="CDP_API_KEY_SECRET"
    )
    elsewhere = CdpAuthenticator(
        "jwt", KEY_ID, key.secret, base_url="http://127.0.0.2:1", secret_variable="S"
    )
    for_verify = auth.headers("POST", f"{server.url}/verify")["Authorization"]

    ok = post(server, "/verify", for_verify.removeprefix("Bearer "))
    on_settle = post(server, "/settle", for_verify.removeprefix("Bearer "))
    other_host = elsewhere.headers("POST", "http://127.0.0.2:1/verify")["Authorization"]
    on_other_host = post(server, "/verify", other_host.removeprefix("Bearer "))
    get_token = auth.headers("GET", f"{server.url}/verify")["Authorization"]
    other_method = post(server, "/verify", get_token.removeprefix("Bearer "))

    assert ok.status_code == 200
    assert (on_settle.status_code, on_other_host.status_code, other_method.status_code) == (
        401,
        401,
        401,
    )
    assert server.rejections == ["wrong_uri", "wrong_uri", "wrong_uri"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"iss": "cdp"}, "wrong_issuer"),
        ({"sub": "someone-else"}, "wrong_subject"),
        ({"exp": None}, "missing_claim_exp"),
        ({"jti": "not-a-uuid"}, "bad_jti"),
        ({"exp": "+600"}, "lifetime_too_long"),
        ({"iat": "+300"}, "not_yet_valid"),
    ],
)
def test_the_server_checks_payai_claims(
    change: dict[str, Any], reason: str, jwt_fakes: JwtFactory
) -> None:
    """iss, sub, exp, a UUID jti, a lifetime of at most 120 s, no token from the future."""
    key = payai_key()
    server = jwt_fakes(key)
    now = int(time.time())
    claims = claims_for(key, server, "POST", "/settle", now)
    for name, value in change.items():
        if value is None:
            del claims[name]
        elif isinstance(value, str) and value.startswith("+"):
            claims[name] = now + int(value)
            if name == "iat":
                claims["exp"] = claims["iat"] + 120
        else:
            claims[name] = value

    assert post(server, "/settle", sign(key, claims)).status_code == 401
    assert server.rejections == [reason]


def test_the_server_refuses_alg_none_and_a_cdp_token_without_nonce(jwt_fakes: JwtFactory) -> None:
    """An unsigned token is refused, as is a CDP token missing cdp-sdk's header nonce."""
    key = cdp_es256()
    server = jwt_fakes(key)
    now = int(time.time())
    claims = claims_for(key, server, "POST", "/verify", now)
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": KEY_ID})
    no_nonce = jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": KEY_ID})

    assert post(server, "/verify", unsigned).status_code == 401
    assert post(server, "/verify", no_nonce).status_code == 401
    assert server.rejections == ["wrong_algorithm", "bad_nonce"]


# --- tokens ----------------------------------------------------------------------------------


def test_payai_tokens_carry_exactly_the_documented_claims() -> None:
    """sub = key id, iss payai-merchant, iat, exp = iat + 120, jti a UUID; header kid, EdDSA."""
    key = payai_key()
    auth = PayaiAuthenticator("payai", KEY_ID, key.secret, secret_variable="S")

    token = auth.headers("POST", "https://facilitator.payai.network/verify")["Authorization"]
    token = token.removeprefix("Bearer ")
    claims = jwt.decode(token, key.public, algorithms=["EdDSA"], issuer="payai-merchant")

    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": KEY_ID, "typ": "JWT"}
    assert set(claims) == {"sub", "iss", "iat", "exp", "jti"}
    assert claims["sub"] == KEY_ID
    assert claims["exp"] == claims["iat"] + 120
    assert abs(claims["iat"] - time.time()) < 5
    assert len(claims["jti"]) == 36


@pytest.mark.parametrize("kind", ["cdp-es256", "cdp-ed25519"])
def test_cdp_tokens_bind_like_cdp_sdks_own_facilitator_config(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """For CDP's URL our token has the claims and headers of ``cdp.x402``'s own helper."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # cdp.x402 leaves a notice file
    from cdp.x402.x402 import create_cdp_auth_headers

    key = KEYS[kind]()
    ours = CdpAuthenticator("cdp", KEY_ID, key.secret, base_url=CDP_URL, secret_variable="S")
    theirs = create_cdp_auth_headers(KEY_ID, key.secret)()

    for op, method in (("verify", "POST"), ("settle", "POST"), ("supported", "GET")):
        mine = ours.headers(method, f"{CDP_URL}/{op}")
        reference = theirs[op]
        assert mine["Correlation-Context"] == reference["Correlation-Context"]
        got, want = (
            jwt.decode(
                h["Authorization"].removeprefix("Bearer "), key.public, algorithms=[key.algorithm]
            )
            for h in (mine, reference)
        )
        assert (
            got["uris"] == want["uris"] == [f"{method} api.cdp.coinbase.com/platform/v2/x402/{op}"]
        )
        assert {k: v for k, v in got.items() if k not in ("nbf", "exp")} == {
            k: v for k, v in want.items() if k not in ("nbf", "exp")
        }
        assert got["exp"] - got["nbf"] == 120
        header = jwt.get_unverified_header(mine["Authorization"].removeprefix("Bearer "))
        assert (header["alg"], header["kid"], len(header["nonce"])) == (key.algorithm, KEY_ID, 16)


def test_a_token_is_reused_until_shortly_before_it_expires(clock: FakeClock) -> None:
    """One token per (method, URL) until REFRESH_BEFORE_S before expiry; PayAI's serve all."""
    cdp = CdpAuthenticator(
        "cdp", KEY_ID, cdp_es256().secret, base_url=CDP_URL, secret_variable="S", clock=clock
    )
    payai = PayaiAuthenticator(
        "payai", KEY_ID, payai_key().secret, secret_variable="S", clock=clock
    )
    verify, settle = f"{CDP_URL}/verify", f"{CDP_URL}/settle"

    first = cdp.headers("POST", verify)
    assert cdp.headers("POST", verify) is first
    assert cdp.headers("POST", settle) != first
    assert payai.headers("POST", settle) is payai.headers("POST", verify)
    clock.advance(TOKEN_TTL_S - REFRESH_BEFORE_S - 1)
    assert cdp.headers("POST", verify) is first
    clock.advance(2)
    assert cdp.headers("POST", verify) is not first


def test_without_reuse_every_request_gets_its_own_token() -> None:
    """reuse_tokens=False signs per request (what the cost measurement compares against)."""
    auth = PayaiAuthenticator(
        "p", KEY_ID, payai_key().secret, secret_variable="S", reuse_tokens=False
    )

    assert auth.headers("POST", "u") != auth.headers("POST", "u")


# --- configuration and start-up ---------------------------------------------------------------


def upstream(auth: dict[str, Any]) -> UpstreamConfig:
    return UpstreamConfig.model_validate(
        {"name": "paid", "url": "http://127.0.0.1:9001", "auth": auth}
    )


def test_cdp_and_payai_default_to_the_sdks_variables() -> None:
    """auth: {type: cdp} reads CDP_API_KEY_ID / _SECRET; payai reads PAYAI_API_KEY_ID / _SECRET."""
    cdp, payai = upstream({"type": "cdp"}).auth, upstream({"type": "payai"}).auth

    assert cdp == CdpAuth(
        type="cdp", key_id_env="CDP_API_KEY_ID", key_secret_env="CDP_API_KEY_SECRET"
    )
    assert payai == PayaiAuth(
        type="payai", key_id_env="PAYAI_API_KEY_ID", key_secret_env="PAYAI_API_KEY_SECRET"
    )
    with pytest.raises(ConfigError, match="key_secret"):
        load_config(
            {
                "upstreams": [
                    {"name": "a", "url": "http://x", "auth": {"type": "cdp", "key_secret": "x"}}
                ]
            }
        )


@pytest.mark.parametrize("scheme", ["cdp", "payai"])
@pytest.mark.parametrize("missing", ["id", "secret"])
def test_a_missing_variable_fails_start_up_naming_it(scheme: str, missing: str) -> None:
    """An unset key id or secret is a ConfigError that names the upstream and the variable."""
    id_var, secret_var = f"{scheme.upper()}_TEST_ID", f"{scheme.upper()}_TEST_SECRET"
    key = cdp_es256() if scheme == "cdp" else payai_key()
    environ = {id_var: KEY_ID, secret_var: key.secret}
    del environ[id_var if missing == "id" else secret_var]
    config = upstream({"type": scheme, "key_id_env": id_var, "key_secret_env": secret_var})

    with pytest.raises(ConfigError) as caught:
        authenticator(config, environ)

    message = str(caught.value)
    assert "'paid'" in message
    assert (id_var if missing == "id" else secret_var) in message
    assert key.secret not in message


GARBAGE = {
    "cdp": [
        "not a key at all",
        payai_key(prefix="").secret,  # PKCS#8 Ed25519: cdp-sdk takes PEM EC or 64-byte Ed25519
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        .decode(),
    ],
    "payai": [
        "payai_sk_not-base64!!",
        base64.b64encode(b"\x30\x03\x02\x01\x00").decode(),  # base64, but no key inside
        base64.b64encode(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption()
            )
        ).decode(),  # a PKCS#8 key, but EC
    ],
}


@pytest.mark.parametrize(
    ("scheme", "secret"),
    [(scheme, secret) for scheme, secrets in GARBAGE.items() for secret in secrets],
    ids=[f"{scheme}-{i}" for scheme, secrets in GARBAGE.items() for i in range(len(secrets))],
)
def test_a_garbage_secret_fails_start_up_without_quoting_it(
    scheme: str, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_secrets refuses a secret that is no usable key, naming the variable, not the value."""
    id_var, secret_var = ENV[scheme]
    monkeypatch.setenv(id_var, KEY_ID)
    monkeypatch.setenv(secret_var, secret)
    config = load_config(
        {"upstreams": [{"name": "paid", "url": "http://127.0.0.1:1", "auth": {"type": scheme}}]}
    )

    with pytest.raises(ConfigError) as caught:
        check_secrets(config)

    message = str(caught.value)
    assert secret_var in message
    assert "'paid'" in message
    assert secret.strip() not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_the_cli_stops_with_code_3_on_a_bad_payai_secret(tmp_path: Path) -> None:
    """The operator sees the variable's name, exit code 3, no traceback and no secret."""
    config = tmp_path / "payai.yaml"
    config.write_text(
        "upstreams:\n  - name: payai\n    url: http://127.0.0.1:1\n"
        "    auth: {type: payai, key_secret_env: PAYAI_SECRET_UNDER_TEST}\n"
    )
    secret = "payai_sk_c2VjcmV0LWJ1dC1ub3QtYS1rZXk="
    env = {**os.environ, "PAYAI_API_KEY_ID": KEY_ID, "PAYAI_SECRET_UNDER_TEST": secret}

    result = subprocess.run(
        [sys.executable, "-m", "x402_aggregator", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "COLUMNS": "200"},
    )

    assert result.returncode == 3
    assert "PAYAI_SECRET_UNDER_TEST" in result.stderr
    assert "Traceback" not in result.stderr
    assert "c2VjcmV0" not in result.stdout + result.stderr


def test_cdp_without_cdp_sdk_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the optional extra, type cdp fails start-up and says what to install."""
    monkeypatch.setitem(sys.modules, "cdp.auth.utils.http", None)  # makes the import fail

    with pytest.raises(ConfigError, match=r"x402-aggregator\[cdp\]"):
        authenticator(
            upstream({"type": "cdp"}), {"CDP_API_KEY_ID": KEY_ID, "CDP_API_KEY_SECRET": "x"}
        )


def test_static_kinds_keep_constant_headers_and_token_kinds_have_none() -> None:
    """bearer/header answer one mapping for every request; auth_headers refuses token kinds."""
    bearer = authenticator(upstream({"type": "bearer", "token_env": "T"}), {"T": "tok"})

    assert isinstance(bearer, StaticAuthenticator)
    assert bearer.static
    assert bearer.headers("POST", "a") is bearer.headers("GET", "b")
    assert dict(bearer.headers("POST", "a")) == {"Authorization": "Bearer tok"}
    assert "tok" not in repr(bearer)
    with pytest.raises(ConfigError, match="signs each request"):
        auth_headers(upstream({"type": "payai"}), {})


def test_reprs_and_signing_errors_show_no_secret() -> None:
    """Neither an authenticator's repr nor a signing failure quotes the key or a token."""
    key = payai_key()
    auth = PayaiAuthenticator("payai", KEY_ID, key.secret, secret_variable="S")
    token = auth.headers("POST", "u")["Authorization"]

    def broken(*args: Any, **kwargs: Any) -> str:
        raise ValueError(f"cannot sign with {key.secret}")

    auth._encode = broken
    auth._cache.clear()
    with pytest.raises(SigningError) as caught:
        auth.headers("POST", "u")

    for text in (repr(auth), str(caught.value)):
        assert key.secret not in text
        assert token not in text
    assert caught.value.__cause__ is None


async def test_an_upstream_that_cannot_sign_is_retryable_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signing failure ends the call as retryable (never arrived), even for a settle."""
    key = payai_key()
    monkeypatch.setenv("PAYAI_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("PAYAI_API_KEY_SECRET", key.secret)
    sent: list[UpstreamRequest] = []

    async def handler(request: UpstreamRequest) -> UpstreamResponse:
        sent.append(request)
        return UpstreamResponse(200, {}, b'{"isValid": true, "payer": "0x"}')

    up = Upstream(upstream({"type": "payai"}), HandlerTransport(handler))
    request = parse_request(orjson.dumps(v2_body()), "verify")
    assert (await up.call("verify", request)).kind == "ok"
    assert sent[0].headers["Authorization"].startswith("Bearer ey")

    def fail(method: str, url: str) -> dict[str, str]:
        raise SigningError("upstream 'paid': could not sign a payai token (ValueError)")

    monkeypatch.setattr(up._auth, "headers", fail)
    outcome = await up.call("settle", request)

    assert (outcome.kind, outcome.never_arrived) == ("retryable", True)
    assert "could not sign" in (outcome.error or "")
    assert len(sent) == 1


def test_check_tells_a_refused_key_apart_from_an_unreachable_upstream(
    tmp_path: Path, jwt_fakes: JwtFactory
) -> None:
    """A validating upstream that refuses our key is "auth failed" (exit 4), not "unreachable"."""
    server = jwt_fakes(payai_key(), name="payai")
    wrong = payai_key()  # a valid key, but not the one the server knows
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "check.yaml"
    config.write_text(
        f"upstreams:\n  - name: payai\n    url: {server.url}\n    auth: {{type: payai}}\n"
        f"  - name: dead\n    url: {dead}\n    priority: 1\n"
    )
    env = {**os.environ, "PAYAI_API_KEY_ID": KEY_ID, "PAYAI_API_KEY_SECRET": wrong.secret}

    result = subprocess.run(
        [sys.executable, "-m", "x402_aggregator", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "COLUMNS": "200"},
        check=False,
    )

    assert result.returncode == 4, result.stdout + result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "auth failed" in rows["payai"]
    assert "unreachable" in rows["dead"]
    assert server.rejected >= 1
    assert wrong.secret.removeprefix("payai_sk_")[:12] not in result.stdout + result.stderr
