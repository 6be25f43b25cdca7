"""Every secret the configuration names is read in one step, and never shown."""

from __future__ import annotations

from typing import Any

import pytest

from x402_aggregator.config import load_config
from x402_aggregator.errors import ConfigError
from x402_aggregator.secrets import read_secrets, upstream_secrets

SECRET = "s3cr3t-value-never-shown"


def config(**sections: Any) -> Any:
    upstreams = sections.pop(
        "upstreams",
        [
            {
                "name": "primary",
                "url": "http://127.0.0.1:1",
                "auth": {"type": "bearer", "token_env": "T_PRIMARY"},
            },
            {
                "name": "spare",
                "url": "http://127.0.0.1:2",
                "enabled": False,
                "auth": {"type": "bearer", "token_env": "T_SPARE"},
            },
        ],
    )
    return load_config({"upstreams": upstreams, **sections})


FULL = {
    "server": {"api_keys_env": "KEYS"},
    "admin": {"token_env": "ADMIN"},
    "alerts": {"webhook_url_env": "HOOK"},
    "ledger": {"url_env": "LEDGER", "public_rpcs": False},
    "networks": {
        "base-sepolia": {"rpc_url_env": "RPC"},
        "eip155:8453": {"rpc_url": "http://127.0.0.1:8545"},
    },
}
ENVIRON = {
    "T_PRIMARY": f"{SECRET}-token\n",
    "KEYS": f"shop:{SECRET}-key",
    "ADMIN": f"{SECRET}-admin",
    "HOOK": "http://127.0.0.1:9/hook?token=x",
    "LEDGER": "sqlite:///:memory:",
    "RPC": "http://127.0.0.1:8546/key",
}


def test_every_named_variable_is_read_once_and_stands_for_its_field() -> None:
    """The engine's and the service's secrets come from one read, stripped of file newlines."""
    secrets = read_secrets(config(**FULL), ENVIRON)

    assert secrets.values["T_PRIMARY"] == f"{SECRET}-token"
    assert secrets.admin_token == f"{SECRET}-admin"
    assert secrets.webhook_url == "http://127.0.0.1:9/hook?token=x"
    assert secrets.ledger_url == "sqlite:///:memory:"
    assert secrets.rpc_urls == {
        "eip155:84532": "http://127.0.0.1:8546/key",  # a v1 name keyed by its CAIP-2 id
        "eip155:8453": "http://127.0.0.1:8545/",
    }
    assert "T_SPARE" not in secrets.values  # a disabled upstream needs no secret
    assert SECRET not in repr(secrets)


def test_the_engine_does_not_need_the_services_secrets() -> None:
    """An in-process client shares the service's file, not its API keys or admin token."""
    environ = {k: v for k, v in ENVIRON.items() if k not in ("KEYS", "ADMIN")}

    secrets = read_secrets(config(**FULL), environ, server=False)

    assert secrets.ledger_url == "sqlite:///:memory:"
    assert "ADMIN" not in secrets.values
    with pytest.raises(ConfigError, match=r"server\.api_keys_env names environment variable KEYS"):
        read_secrets(config(**FULL), environ)


@pytest.mark.parametrize(
    ("missing", "where"),
    [
        ("T_PRIMARY", "upstream 'primary': auth.token_env"),
        ("HOOK", "alerts.webhook_url_env"),
        ("LEDGER", "ledger.url_env"),
        ("RPC", "networks.base-sepolia.rpc_url_env"),
        ("ADMIN", "admin.token_env"),
    ],
)
@pytest.mark.parametrize("value", [None, "  \n"], ids=["unset", "blank"])
def test_an_unset_variable_is_named_with_its_field(
    missing: str, where: str, value: str | None
) -> None:
    """The error names the field and the variable, and no value of any other secret."""
    environ = dict(ENVIRON)
    if value is None:
        del environ[missing]
    else:
        environ[missing] = value

    with pytest.raises(ConfigError) as caught:
        read_secrets(config(**FULL), environ)

    message = str(caught.value)
    assert f"{where} names environment variable {missing}, which is not set" in message
    assert SECRET not in message


def test_the_public_rpcs_are_the_default_and_the_file_overrides_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without ``networks``, the shipped public RPCs; a configured one replaces its network's."""
    monkeypatch.delenv("X402_AGGREGATOR_LEDGER__PUBLIC_RPCS")  # set off for every test
    defaults = read_secrets(config(), {"T_PRIMARY": "t"}).rpc_urls
    networks = {"base-sepolia": {"rpc_url": "http://127.0.0.1:8545"}}
    overridden = read_secrets(config(networks=networks), {"T_PRIMARY": "t"}).rpc_urls

    assert defaults["eip155:84532"] == "https://sepolia.base.org"
    assert overridden["eip155:84532"] == "http://127.0.0.1:8545/"
    assert overridden["eip155:8453"] == defaults["eip155:8453"]


def test_an_upstream_built_alone_reads_only_its_own_variables() -> None:
    """``Upstream(config, transport)`` outside an engine reads just what its auth names."""
    cfg = config()

    assert upstream_secrets(cfg.upstreams[0], ENVIRON) == {"T_PRIMARY": f"{SECRET}-token"}
    with pytest.raises(ConfigError, match=r"upstream 'primary': auth\.token_env"):
        upstream_secrets(cfg.upstreams[0], {})
