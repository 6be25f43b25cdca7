"""The files in examples/ work: each Python shop sells a real payment on the local test bed.

Every example is imported from its path and built with ``create_app`` from the environment it
documents (FACILITATOR_URL, X402_AGGREGATOR_CONFIG, PAY_TO, NETWORK); only the price is passed
in, because the test bed's USDC is not the token the SDK maps "$0.01" to. A buyer on the SDK's
own client then gets a 402, pays, gets a 200, and the payer is debited exactly once. Each script
is also started as ``python examples/<file>.py`` and must answer 402. The YAML files load, and
examples/express.md names only packages whose declarations were read.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from werkzeug.serving import make_server
from x402 import x402Client
from x402.http import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
)
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.schemas import PaymentRequirements

from x402_aggregator.config import load_config
from x402_aggregator.localnet.chain import (
    NETWORK,
    USDC_NAME,
    USDC_VERSION,
    payer_account,
)
from x402_aggregator.localnet.live import LiveServer, free_port
from x402_aggregator.localnet.network import TestBed
from x402_aggregator.localnet.npm import node_modules

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PRICE = 10_000  # 0.01 USDC

#: What examples/express.md may name, with the version whose .d.ts files were read. Packages
#: in this repository's node_modules must be installed at exactly this version.
VERIFIED_PACKAGES = {
    "@x402/core": "2.27.0",
    "@x402/evm": "2.27.0",
    "@x402/express": "2.27.0",
    "@x402/hono": "2.27.0",
    "@x402/next": "2.25.0",
    "x402-express": "1.2.0",
    "x402-next": "1.2.0",
    "x402-hono": "1.1.0",
    "x402": "1.2.0",
}


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    module_name = f"x402_examples_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # Flask finds its root path through sys.modules
    spec.loader.exec_module(module)
    return module


def bed_price(bed: TestBed) -> dict[str, Any]:
    """0.01 in the test bed's own USDC deployment."""
    return {
        "amount": str(PRICE),
        "asset": bed.payer.asset,
        "extra": {"name": USDC_NAME, "version": USDC_VERSION},
    }


@pytest.fixture
def shop_env(testbed: TestBed, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment every example reads: who gets paid, on which network."""
    for name in ("FACILITATOR_URL", "X402_AGGREGATOR_CONFIG", "PRICE", "HOST", "PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAY_TO", testbed.pay_to)
    monkeypatch.setenv("NETWORK", NETWORK)
    return monkeypatch


@pytest.fixture
def aggregator_url(through: Callable[..., httpx.Client]) -> str:
    """A running aggregator (the `serve` command's app) in front of both test bed facilitators."""
    return str(through("python", "typescript").base_url).rstrip("/")


@pytest.fixture
def config_file(testbed: TestBed, tmp_path: Path) -> Path:
    """The test bed's aggregator configuration as the YAML file the examples are pointed at."""
    path = tmp_path / "aggregator.yaml"
    path.write_text(yaml.safe_dump(testbed.aggregator_config("python", "typescript")))
    return path


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(10)


def buy_once(bed: TestBed, base_url: str) -> None:
    """402 without payment, 200 with the SDK buyer's payment, and exactly one debit."""
    before = bed.balances()
    with httpx.Client(base_url=base_url, timeout=60) as http:
        first = http.get("/weather")
        assert first.status_code == 402, first.text
        required = decode_payment_required_header(first.headers["payment-required"])
        assert required.accepts[0].pay_to == bed.pay_to

        buyer = x402Client()
        buyer.set_spend_controls(False)  # the test bed's USDC is not a token the SDK knows
        register_exact_evm_client(buyer, EthAccountSigner(payer_account()))
        payload = asyncio.run(buyer.create_payment_payload(required))
        paid = http.get(
            "/weather", headers={"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}
        )

    assert paid.status_code == 200, paid.text
    assert paid.json() == {"weather": "sunny"}
    settlement = decode_payment_response_header(paid.headers["payment-response"])
    assert settlement.success is True
    assert settlement.transaction
    after = bed.balances()
    assert after["payer"] == before["payer"] - PRICE
    assert after["pay_to"] == before["pay_to"] + PRICE


def test_fastapi_via_url_sells_through_a_running_aggregator(
    testbed: TestBed, shop_env: pytest.MonkeyPatch, aggregator_url: str
) -> None:
    shop_env.setenv("FACILITATOR_URL", aggregator_url)
    app = load_example("fastapi_via_url").create_app(price=bed_price(testbed))
    with LiveServer(app) as live:
        buy_once(testbed, live.url)


def test_fastapi_in_process_sells_through_the_embedded_aggregator(
    testbed: TestBed, shop_env: pytest.MonkeyPatch, config_file: Path
) -> None:
    shop_env.setenv("X402_AGGREGATOR_CONFIG", str(config_file))
    app = load_example("fastapi_in_process").create_app(price=bed_price(testbed))
    with LiveServer(app) as live:  # its lifespan closes the AggregatorClient
        buy_once(testbed, live.url)


@pytest.mark.parametrize("facilitator", ["in-process", "url"])
def test_flask_app_sells_in_process_or_through_a_running_aggregator(
    testbed: TestBed,
    shop_env: pytest.MonkeyPatch,
    config_file: Path,
    facilitator: str,
    request: pytest.FixtureRequest,
) -> None:
    """Default: AggregatorClientSync from X402_AGGREGATOR_CONFIG; with FACILITATOR_URL: HTTP."""
    shop_env.setenv("X402_AGGREGATOR_CONFIG", str(config_file))
    if facilitator == "url":
        shop_env.setenv("FACILITATOR_URL", request.getfixturevalue("aggregator_url"))
    example = load_example("flask_app")
    app = example.create_app(price=bed_price(testbed))
    kind = type(app.extensions[example.FACILITATOR]).__name__
    assert kind == ("HTTPFacilitatorClientSync" if facilitator == "url" else "AggregatorClientSync")
    try:
        with serve_wsgi(app) as url:
            buy_once(testbed, url)
    finally:
        example.close(app)


@pytest.mark.parametrize("script", ["fastapi_via_url", "fastapi_in_process", "flask_app"])
def test_example_runs_as_a_script_and_answers_402(
    testbed: TestBed, aggregator_url: str, config_file: Path, script: str
) -> None:
    """`python examples/<script>.py` serves on $PORT with the documented defaults ($0.01)."""
    port = free_port()
    env = {
        **os.environ,
        "PAY_TO": testbed.pay_to,
        "PORT": str(port),
        "FACILITATOR_URL": aggregator_url,
        "X402_AGGREGATOR_CONFIG": str(config_file),
    }
    for name in ("NETWORK", "PRICE", "HOST"):
        env.pop(name, None)
    if script == "flask_app":
        del env["FACILITATOR_URL"]  # its in-process default; the URL way is tested above
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{script}.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        response = None
        deadline = time.monotonic() + 30
        while response is None:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the example did not start listening"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/weather", timeout=10)
            except httpx.TransportError:
                time.sleep(0.1)
        assert response.status_code == 402, response.text
        required = decode_payment_required_header(response.headers["payment-required"])
        (accepts,) = required.accepts
        assert isinstance(accepts, PaymentRequirements)  # x402 v2
        assert (accepts.network, accepts.pay_to, accepts.amount) == (
            NETWORK,
            testbed.pay_to,
            "10000",  # $0.01 in the network's default USDC (6 decimals)
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_aggregator_yaml_loads() -> None:
    config = load_config(EXAMPLES / "aggregator.yaml")
    assert [u.name for u in config.upstreams] == ["primary", "x402-org"]


def test_public_facilitators_yaml_loads() -> None:
    config = load_config(EXAMPLES / "public-facilitators.yaml")
    upstreams = {u.name: u for u in config.upstreams}
    assert {name: str(u.url).rstrip("/") for name, u in upstreams.items()} == {
        "cdp": "https://api.cdp.coinbase.com/platform/v2/x402",
        "x402-org": "https://www.x402.org/facilitator",
        "payai": "https://facilitator.payai.network",
        "x402-rs": "https://facilitator.x402.rs",
    }
    for name, prefix in (("cdp", "CDP"), ("payai", "PAYAI")):
        auth: Any = upstreams[name].auth
        assert (auth.type, auth.key_id_env, auth.key_secret_env) == (
            name,
            f"{prefix}_API_KEY_ID",
            f"{prefix}_API_KEY_SECRET",
        )
    assert upstreams["x402-org"].auth is None
    assert upstreams["x402-rs"].auth is None
    assert config.networks["eip155:8453"].rpc_url_env == "BASE_RPC_URL"
    assert config.networks["eip155:84532"].rpc_url_env == "BASE_SEPOLIA_RPC_URL"


def mentioned_packages(text: str) -> set[str]:
    names = set(re.findall(r"@x402/[a-z0-9-]+", text))
    names |= set(re.findall(r"(?<![\w@/.-])x402-[a-z0-9-]+", text)) - {"x402-aggregator"}
    if re.search(r"`x402`|from \"x402\"", text):
        names.add("x402")
    return names


def test_express_md_names_only_verified_packages() -> None:
    text = (EXAMPLES / "express.md").read_text()
    mentioned = mentioned_packages(text)
    assert mentioned == set(VERIFIED_PACKAGES), mentioned ^ set(VERIFIED_PACKAGES)
    modules = node_modules()
    for package, version in VERIFIED_PACKAGES.items():
        assert f"| `{package}` | {version} |" in text, package
        manifest = modules / package / "package.json"
        if manifest.is_file():  # installed by `npm ci`: the file must describe this version
            assert json.loads(manifest.read_text())["version"] == version, package
    # The option names the file states.
    for claim in (
        "new HTTPFacilitatorClient({",
        "paymentMiddleware(routes, server)",
        "paymentProxy(",
        "withX402(handler, routes, server)",
        "paymentMiddleware(payTo, routes, facilitator?, paywall?)",
        '{ url: "http://127.0.0.1:4020" }',
    ):
        assert claim in text, claim
    # Every subpath imported from an installed package is one it exports.
    for specifier in re.findall(r'from "(@x402/[a-z0-9-]+)/([^"]+)"', text):
        package, subpath = specifier
        manifest = modules / package / "package.json"
        if manifest.is_file():
            assert f"./{subpath}" in json.loads(manifest.read_text())["exports"], specifier


CORE_SNIPPET = """
const { HTTPFacilitatorClient, x402ResourceServer } = require("@x402/core/server");
const { ExactEvmScheme } = require("@x402/evm/exact/server");

(async () => {
  const facilitatorClient = new HTTPFacilitatorClient({ url: process.env.FACILITATOR_URL });
  const server = new x402ResourceServer(facilitatorClient)
    .register("eip155:84532", new ExactEvmScheme());
  await server.initialize();
  const kind = server.getSupportedKind(2, "eip155:84532", "exact");
  console.log(JSON.stringify({ kind }));
})().catch((error) => { console.error(error); process.exit(1); });
"""


def test_express_md_core_client_reaches_a_running_aggregator(aggregator_url: str) -> None:
    """The @x402/core part of express.md, on the installed SDK, against a real aggregator."""
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, "-e", CORE_SNIPPET],
        env={**os.environ, "NODE_PATH": str(node_modules()), "FACILITATOR_URL": aggregator_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kind = json.loads(result.stdout.strip().splitlines()[-1])["kind"]
    assert (kind["x402Version"], kind["scheme"], kind["network"]) == (2, "exact", NETWORK)
