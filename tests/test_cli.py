"""The ``x402-aggregator`` command, run as a real process."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from x402_aggregator import __version__
from x402_aggregator.config import load_config
from x402_aggregator.ledger import AttemptEnd, Ledger, Payment
from x402_aggregator.localnet.live import free_port
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.protocol import parse_request

from .conftest import FakeFactory

COMMAND = [sys.executable, "-m", "x402_aggregator"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def write_config(path: Path, *urls: tuple[str, str], port: int | None = None) -> Path:
    lines = []
    if port is not None:
        lines.append(f"server: {{host: 127.0.0.1, port: {port}}}")
    lines.append("upstreams:")
    for priority, (name, url) in enumerate(urls):
        lines += [f"  - name: {name}", f"    url: {url}", f"    priority: {priority}"]
    lines += ["health: {timeout_s: 2, startup_wait_s: 2}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def served() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; each is terminated (then killed) afterwards."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.terminate()
        try:
            process.communicate(timeout=10)  # also closes the pipes
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=10)


def wait_healthy(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not become healthy")


def test_version() -> None:
    """--version prints the package version."""
    result = run("--version")

    assert result.returncode == 0
    assert result.stdout.strip() == f"x402-aggregator {__version__}"


def test_console_script_is_installed() -> None:
    """The package installs an x402-aggregator command."""
    script = Path(sys.executable).parent / "x402-aggregator"

    assert script.exists() or shutil.which("x402-aggregator")


def test_serve_forwards_and_stops_cleanly(
    tmp_path: Path, fakes: FakeFactory, served: list[subprocess.Popen[str]]
) -> None:
    """serve answers on its port, forwards to its upstream and shuts down gracefully on SIGTERM."""
    primary = fakes("primary")
    port = free_port()
    config = write_config(tmp_path / "agg.yaml", ("primary", primary.url), port=port)
    process = subprocess.Popen(
        [*COMMAND, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)

    response = httpx.post(f"{url}/verify", json=v2_body(), timeout=10)
    process.send_signal(signal.SIGTERM)

    assert response.json()["isValid"] is True
    assert response.headers["X-Aggregator-Upstream"] == "primary"
    _, stderr = process.communicate(timeout=15)
    # uvicorn re-raises SIGTERM after a graceful shutdown, so the exit status is -15, not 0.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in stderr


def test_port_comes_from_the_command_line_over_env_and_file(
    tmp_path: Path, fakes: FakeFactory, served: list[subprocess.Popen[str]]
) -> None:
    """--port beats X402_AGGREGATOR_SERVER__PORT, which beats the file."""
    primary = fakes("primary")
    config = write_config(tmp_path / "agg.yaml", ("primary", primary.url), port=free_port())
    env_port, flag_port = free_port(), free_port()
    env = {**os.environ, "X402_AGGREGATOR_CONFIG": str(config)}
    by_env = subprocess.Popen(
        [*COMMAND, "serve"],
        env={**env, "X402_AGGREGATOR_SERVER__PORT": str(env_port)},
        stderr=subprocess.PIPE,
        text=True,
    )
    served.append(by_env)
    by_flag = subprocess.Popen(
        [*COMMAND, "serve", "--port", str(flag_port)],
        env={**env, "X402_AGGREGATOR_SERVER__PORT": str(free_port())},
        stderr=subprocess.PIPE,
        text=True,
    )
    served.append(by_flag)

    wait_healthy(f"http://127.0.0.1:{env_port}", by_env)
    wait_healthy(f"http://127.0.0.1:{flag_port}", by_flag)


def test_a_bad_config_fails_at_start_naming_the_field(tmp_path: Path) -> None:
    """A config error exits with code 3 and a message naming the file and the field."""
    config = tmp_path / "bad.yaml"
    config.write_text("upstreams:\n  - name: primary\n    url: not-a-url\n    priority: first\n")

    result = run("serve", "--config", str(config))

    assert result.returncode == 3
    assert "bad.yaml" in result.stderr
    assert "upstreams[0] (primary).url" in result.stderr
    assert "upstreams[0] (primary).priority" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_secret_fails_at_start_without_printing_secrets(tmp_path: Path) -> None:
    """An auth variable that is not set stops start-up with code 3 and names the variable."""
    config = tmp_path / "auth.yaml"
    config.write_text(
        "upstreams:\n  - name: paid\n    url: http://127.0.0.1:1\n"
        "    auth: {type: bearer, token_env: PAID_TOKEN_NOT_SET}\n"
    )

    result = run("check", "--config", str(config))

    assert result.returncode == 3
    assert "PAID_TOKEN_NOT_SET" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_prints_a_table_and_fails_when_an_upstream_is_unreachable(
    tmp_path: Path, fakes: FakeFactory
) -> None:
    """check lists every upstream with reachability and kinds; exit 1 if any is unreachable."""
    primary = fakes("primary")
    dead = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "agg.yaml", ("primary", primary.url), ("dead", dead))

    result = run("check", "--config", str(config))
    healthy = run(
        "check", "--config", str(write_config(tmp_path / "ok.yaml", ("primary", primary.url)))
    )

    assert result.returncode == 1
    assert "primary" in result.stdout
    assert "dead" in result.stdout
    assert "v2 exact eip155:84532" in result.stdout
    assert "unreachable" in result.stdout
    assert "auth failed" not in result.stdout  # the network failed, not our credentials
    assert healthy.returncode == 0


def test_ledger_list_and_show_read_the_ledger_directly(private_ledger: str) -> None:
    """With the service down, the CLI still shows what was settled and how."""

    async def record() -> str:
        ledger = Ledger.from_url(private_ledger)
        await ledger.open(heartbeat=False)
        try:
            request = parse_request(orjson.dumps(v2_body()), "settle")
            claim = await ledger.claim(Payment.of(request))
            await ledger.begin_attempt(claim.record, 1, "settle", "primary")
            await ledger.finish(
                claim.record,
                "settled",
                transaction="0xfeed",
                response=b'{"success":true,"transaction":"0xfeed"}',
                reported=True,
                attempt=AttemptEnd(1, "ok", 200, "0xfeed"),
            )
            return request.identity
        finally:
            await ledger.aclose()

    identity = asyncio.run(record())

    listed = run("ledger", "list", "--json")
    table = run("ledger", "list", "--state", "settled")
    shown = run("ledger", "show", identity)
    missing = run("ledger", "show", "no-such-payment")
    bad_state = run("ledger", "list", "--state", "bogus")

    assert listed.returncode == 0, listed.stderr
    [entry] = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert (entry["id"], entry["state"], entry["transaction"]) == (identity, "settled", "0xfeed")
    assert "0xfeed" in table.stdout
    assert shown.returncode == 0
    assert orjson.loads(shown.stdout)["attempts"][0]["upstream"] == "primary"
    assert "request" not in orjson.loads(shown.stdout)
    assert missing.returncode == 1
    assert bad_state.returncode == 2


def test_init_writes_a_starter_config_that_loads_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "agg.yaml"

    first = run("init", str(target))
    again = run("init", str(target))
    target.write_text("edited\n")
    forced = run("init", str(target), "--force")

    assert first.returncode == 0, first.stderr
    config = load_config(target)
    assert [u.name for u in config.upstreams] == ["x402-org", "payai", "x402-rs"]
    assert config.ledger.url.startswith("sqlite:///")
    assert again.returncode == 1
    assert "exists" in again.stderr
    assert forced.returncode == 0
    assert "upstreams:" in target.read_text()


def test_demo_without_the_test_bed_prints_the_install_command_intact() -> None:
    """Without the test bed's packages, demo exits 1 naming `pip install -e '.[testbed]'` intact."""
    # None in sys.modules makes `import eth_account` fail, as when the extra is not installed.
    script = (
        "import sys\n"
        "sys.modules['eth_account'] = None\n"
        "from x402_aggregator.cli import main\n"
        "sys.argv = ['x402-aggregator', 'demo']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )

    assert result.returncode == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert "demo failed:" in message
    assert "`pip install -e '.[testbed]'` and `npm ci`" in message
    assert "Traceback" not in result.stderr


def test_demo_failure_messages_keep_their_brackets(tmp_path: Path) -> None:
    """A demo failure is printed as it was raised: brackets in it are not taken for markup."""
    missing = tmp_path / "[modules]"

    result = run("demo", env={"X402_TESTBED_NODE_MODULES": str(missing)})

    assert result.returncode == 1, result.stdout + result.stderr
    message = " ".join(result.stdout.split())
    assert f"anvil is not installed at {missing}/" in message
    assert "Traceback" not in result.stderr
