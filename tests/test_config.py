"""Configuration: the YAML file, the environment, defaults, and errors that name the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from x402_aggregator.auth import auth_headers
from x402_aggregator.config import (
    CONFIG_ENV,
    ENV_PREFIX,
    BearerAuth,
    HeaderAuth,
    UpstreamConfig,
    load_config,
)
from x402_aggregator.errors import ConfigError
from x402_aggregator.secrets import upstream_secrets

EXAMPLE = """\
server: {host: 127.0.0.1, port: 4020}
upstreams:
  - name: primary
    url: http://127.0.0.1:9001
    priority: 0          # lower is preferred
    timeout_s: 10        # optional, per call
  - name: backup
    url: http://127.0.0.1:9002
    priority: 1
"""
SECRET = "hunter2-s3cr3t"


@pytest.fixture(autouse=True)
def _no_aggregator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any X402_AGGREGATOR_* variable of the calling shell from these tests."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aggregator.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_the_example_file_loads_as_written(tmp_path: Path) -> None:
    """The documented example loads with both upstreams, their priorities and the server address."""
    config = load_config(write(tmp_path, EXAMPLE))

    assert (config.server.host, config.server.port) == ("127.0.0.1", 4020)
    assert [(u.name, u.base_url, u.priority) for u in config.upstreams] == [
        ("primary", "http://127.0.0.1:9001", 0),
        ("backup", "http://127.0.0.1:9002", 1),
    ]
    assert [u.timeout_s for u in config.upstreams] == [10.0, 10.0]
    assert all(u.enabled and u.auth is None for u in config.upstreams)


def test_a_path_given_as_str_loads_too(tmp_path: Path) -> None:
    """load_config accepts the path as a plain string, as the CLI passes it."""
    config = load_config(str(write(tmp_path, EXAMPLE)))

    assert [u.name for u in config.upstreams] == ["primary", "backup"]


def test_the_config_variable_is_used_when_no_path_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a path, the file named by X402_AGGREGATOR_CONFIG is loaded."""
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, EXAMPLE)))

    config = load_config()

    assert [u.name for u in config.upstreams] == ["primary", "backup"]


def test_without_any_configuration_the_public_facilitators_are_used() -> None:
    """No path and no variable gives the default public upstreams, x402.org preferred."""
    config = load_config()

    upstreams = sorted(config.upstreams, key=lambda u: u.priority)
    assert upstreams[0].name == "x402-org"
    assert upstreams[0].url.scheme == "https"
    assert (upstreams[0].url.host or "").endswith("x402.org")
    assert len(upstreams) >= 2
    assert len({u.priority for u in upstreams}) == len(upstreams)


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X402_AGGREGATOR_SERVER__PORT wins over the file; the file's other fields stay."""
    monkeypatch.setenv("X402_AGGREGATOR_SERVER__PORT", "5000")

    config = load_config(write(tmp_path, EXAMPLE))

    assert (config.server.host, config.server.port) == ("127.0.0.1", 5000)
    assert [u.name for u in config.upstreams] == ["primary", "backup"]


def test_a_mapping_loads_like_a_file() -> None:
    """A dict is validated like a file's contents (how embedders and tests configure)."""
    config = load_config({"upstreams": [{"name": "a", "url": "http://127.0.0.1:9001/"}]})

    assert config.upstreams[0].base_url == "http://127.0.0.1:9001"


def test_a_bad_mapping_is_named_as_such() -> None:
    """Errors in a dict configuration say they come from a mapping, with the field."""
    with pytest.raises(ConfigError, match=r"\(mapping\)") as caught:
        load_config({"upstreams": [{"name": "a", "url": "ftp://127.0.0.1"}]})

    assert "upstreams[0] (a).url" in str(caught.value)


UPSTREAM_A = "{name: a, url: 'http://127.0.0.1:9001'}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "upstreams: [{name: primary, url: 'ftp//nope'}]",
            "upstreams[0] (primary).url",
            id="bad-url",
        ),
        pytest.param(
            f"upstreams: [{UPSTREAM_A}, {{name: b, url: 'http://127.0.0.1:9002', priority: x}}]",
            "upstreams[1] (b).priority",
            id="bad-priority",
        ),
        pytest.param(f"helth: {{}}\nupstreams: [{UPSTREAM_A}]", "helth", id="unknown-top-key"),
        pytest.param(
            f"upstreams: [{UPSTREAM_A}, {UPSTREAM_A}]", "repeated: a", id="duplicate-names"
        ),
        pytest.param(
            "upstreams: [{name: a, url: 'http://127.0.0.1:9001', enabled: false}]",
            "at least one upstream must be enabled",
            id="none-enabled",
        ),
        pytest.param("upstreams: []", "upstreams", id="no-upstreams"),
        pytest.param("server: {port: 4020}", "upstreams", id="upstreams-missing"),
        pytest.param(
            f"server: {{port: 70000}}\nupstreams: [{UPSTREAM_A}]", "server.port", id="bad-port"
        ),
        pytest.param(
            "upstreams: [{name: a, url: 'http://127.0.0.1:9001', auth: {type: bearer}}]",
            "upstreams[0] (a).auth.token_env",
            id="auth-without-variable",
        ),
    ],
)
def test_invalid_fields_are_named_with_the_file(tmp_path: Path, text: str, expected: str) -> None:
    """A file that fails validation raises ConfigError naming the file and the field."""
    path = write(tmp_path, text)

    message = config_error(path)

    assert str(path) in message
    assert expected in message


def test_duplicate_names_are_reported_on_the_upstreams_list(tmp_path: Path) -> None:
    """Repeated upstream names are refused, the message pointing at the upstreams list."""
    message = config_error(write(tmp_path, f"upstreams: [{UPSTREAM_A}, {UPSTREAM_A}]"))

    assert "upstreams: " in message
    assert "unique" in message


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}@127.0.0.1:9001",
        f"http://127.0.0.1:9001/?api_key={SECRET}",
        f"http://127.0.0.1:9001/#{SECRET}",
    ],
    ids=["credentials", "query-string", "fragment"],
)
def test_urls_carrying_secrets_are_refused_without_echoing_them(tmp_path: Path, url: str) -> None:
    """A URL with credentials, a query string or a fragment is refused; the secret is not echoed."""
    path = write(tmp_path, f"upstreams: [{{name: primary, url: '{url}'}}]")

    message = config_error(path)

    assert str(path) in message
    assert "upstreams[0] (primary).url" in message
    assert "auth" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"log-level: debug\nupstreams: [{UPSTREAM_A}]", "log-level"),
        ("upstreams: [{name: a, url: 'http://127.0.0.1:9001', timeoutS: 3}]", "timeoutS"),
    ],
    ids=["top-level-kebab", "upstream-camel"],
)
def test_unknown_keys_are_named_whatever_their_spelling(
    tmp_path: Path, text: str, expected: str
) -> None:
    """An unknown key is named in the message even when it is not snake_case (a camelCase slip)."""
    message = config_error(write(tmp_path, text))

    assert expected in message


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    """A file that is not YAML raises ConfigError naming the file."""
    path = write(tmp_path, "upstreams: [{name: a, url: http://h\n")

    message = config_error(path)

    assert str(path) in message
    assert "not valid YAML" in message


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    """A path that cannot be read raises ConfigError naming the file."""
    path = tmp_path / "nowhere.yaml"

    message = config_error(path)

    assert str(path) in message
    assert "cannot read" in message


def test_a_top_level_list_is_refused(tmp_path: Path) -> None:
    """A YAML list at the top level is refused: the configuration is a mapping."""
    path = write(tmp_path, f"- {UPSTREAM_A}\n")

    message = config_error(path)

    assert str(path) in message
    assert "mapping at the top level" in message


def test_an_empty_file_asks_for_upstreams(tmp_path: Path) -> None:
    """An empty file is an empty mapping, which lacks the required upstreams."""
    path = write(tmp_path, "")

    message = config_error(path)

    assert str(path) in message
    assert "upstreams: Field required" in message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 60.0),
        ({"timeout_s": 10}, 60.0),
        ({"timeout_s": 90}, 90.0),
        ({"timeout_s": 90, "settle_timeout_s": 5}, 5.0),
        ({"settle_timeout_s": 120}, 120.0),
    ],
)
def test_settle_timeout_defaults_to_at_least_a_minute(
    fields: dict[str, float], expected: float
) -> None:
    """settle_timeout is settle_timeout_s when set, else max(timeout_s, 60)."""
    config = UpstreamConfig.model_validate({"name": "a", "url": "http://127.0.0.1:9001", **fields})

    assert config.settle_timeout == expected


def upstream_with(auth: BearerAuth | HeaderAuth) -> UpstreamConfig:
    return UpstreamConfig.model_validate(
        {"name": "primary", "url": "http://127.0.0.1:9001", "auth": auth}
    )


def test_bearer_auth_reads_its_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bearer auth sends Authorization: Bearer with the named variable's value."""
    monkeypatch.setenv("X402_TEST_TOKEN", SECRET)
    upstream = upstream_with(BearerAuth(type="bearer", token_env="X402_TEST_TOKEN"))

    assert auth_headers(upstream, upstream_secrets(upstream)) == {
        "Authorization": f"Bearer {SECRET}"
    }


def test_header_auth_reads_its_value_from_the_environment() -> None:
    """Header auth sends the configured header with the named variable's value."""
    upstream = upstream_with(HeaderAuth(type="header", name="X-API-Key", value_env="KEY"))

    assert auth_headers(upstream, {"KEY": SECRET}) == {"X-API-Key": SECRET}


def test_no_auth_means_no_headers() -> None:
    """An upstream without auth gets no credential headers."""
    upstream = UpstreamConfig.model_validate({"name": "a", "url": "http://127.0.0.1:9001"})

    assert auth_headers(upstream, {"ANYTHING": SECRET}) == {}


@pytest.mark.parametrize(
    ("auth", "variable"),
    [
        (BearerAuth(type="bearer", token_env="CDP_TOKEN"), "CDP_TOKEN"),
        (HeaderAuth(type="header", name="X-API-Key", value_env="PAYAI_KEY"), "PAYAI_KEY"),
    ],
    ids=["bearer", "header"],
)
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_a_missing_secret_names_upstream_and_variable_only(
    auth: BearerAuth | HeaderAuth, variable: str, value: str | None
) -> None:
    """An unset or empty variable raises ConfigError naming upstream and variable, no secret."""
    environ = {"OTHER_TOKEN": SECRET, "X402_TEST_TOKEN": SECRET}
    if value is not None:
        environ[variable] = value

    with pytest.raises(ConfigError) as caught:
        auth_headers(upstream_with(auth), environ)

    message = str(caught.value)
    assert "primary" in message
    assert variable in message
    assert SECRET not in message


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("examples/*.yaml")))
def test_example_configs_load(path: Path) -> None:
    """Every configuration shipped in examples/ is valid."""
    config = load_config(path)

    assert config.upstreams
