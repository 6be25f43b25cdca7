"""Tests of the fault-injecting fake facilitator, over real loopback sockets."""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from x402_aggregator.localnet.fake_facilitator import Behaviour, FakeFacilitator, Mode

pytestmark = pytest.mark.timeout(30)

PAYER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"
V2_BODY: dict[str, Any] = {
    "x402Version": 2,
    "paymentPayload": {
        "x402Version": 2,
        "accepted": {"scheme": "exact", "network": "eip155:84532", "amount": "10000"},
        "payload": {"signature": "0xsig", "authorization": {"from": PAYER, "value": "10000"}},
    },
    "paymentRequirements": {"scheme": "exact", "network": "eip155:84532", "amount": "10000"},
}
TX_RE = re.compile(r"^0x[0-9a-f]{64}$")


@pytest.fixture
def fake() -> Iterator[FakeFacilitator]:
    with FakeFacilitator("primary") as f:
        yield f


@pytest.fixture
def client(fake: FakeFacilitator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5.0) as c:
        yield c


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_verify_ok_returns_valid_with_payer(fake: FakeFacilitator, client: httpx.Client) -> None:
    """OK verify answers 200 isValid:true with payer = authorization.from, tagged with the name."""
    r = client.post("/verify", json=V2_BODY)
    assert r.status_code == 200
    assert r.json() == {"isValid": True, "payer": PAYER}
    assert r.headers["x-fake-facilitator"] == "primary"
    assert fake.calls == {"verify": 1, "settle": 0, "supported": 0}


def test_settle_ok_transaction_is_deterministic_per_fake_and_payload(client: httpx.Client) -> None:
    """OK settle returns a 0x+64-hex tx that is stable per payload and differs across fakes."""
    body = json.dumps(V2_BODY).encode()
    first = client.post("/settle", content=body).json()
    assert first["success"] is True
    assert TX_RE.match(first["transaction"])
    assert first["network"] == "eip155:84532"
    assert first["payer"] == PAYER
    assert client.post("/settle", content=body).json()["transaction"] == first["transaction"]
    assert client.post("/settle", content=body + b" ").json()["transaction"] != first["transaction"]
    with FakeFacilitator("other") as other:
        tx = httpx.post(f"{other.url}/settle", content=body, timeout=5).json()["transaction"]
    assert tx != first["transaction"]


@pytest.mark.parametrize(
    ("payment_payload", "requirements", "network"),
    [
        ({"x402Version": 2, "accepted": {"network": "eip155:8453"}}, {}, "eip155:8453"),
        ({"x402Version": 1, "network": "base-sepolia"}, {}, "base-sepolia"),
        ({"network": "base"}, {"network": "eip155:1"}, "eip155:1"),
        ("not an object", None, ""),
    ],
)
def test_settle_network_falls_back_from_requirements_to_payload(
    client: httpx.Client, payment_payload: Any, requirements: Any, network: str
) -> None:
    """Network comes from requirements, else accepted.network (v2), else payload.network (v1)."""
    body = {
        "x402Version": 2,
        "paymentPayload": payment_payload,
        "paymentRequirements": requirements,
    }
    answer = client.post("/settle", json=body).json()
    assert answer["network"] == network
    assert answer["payer"] == ""


def test_supported_defaults_and_overrides(fake: FakeFacilitator, client: httpx.Client) -> None:
    """/supported lists default kinds, no extensions, and a signer derived from the name."""
    answer = client.get("/supported").json()
    assert answer["kinds"] == [
        {"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
        {"x402Version": 1, "scheme": "exact", "network": "base-sepolia"},
    ]
    assert answer["extensions"] == []
    (signer,) = answer["signers"]["eip155:*"]
    assert re.fullmatch(r"0x[0-9a-f]{40}", signer)
    assert FakeFacilitator("primary").signers == answer["signers"]
    assert FakeFacilitator("secondary").signers != answer["signers"]
    kinds = [{"x402Version": 2, "scheme": "upto", "network": "eip155:8453"}]
    with FakeFacilitator("x", kinds=kinds, extensions=["bazaar"], signers={"solana:*": ["S"]}) as f:
        custom = httpx.get(f"{f.url}/supported", timeout=5).json()
    assert custom == {"kinds": kinds, "extensions": ["bazaar"], "signers": {"solana:*": ["S"]}}


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("verify", {"isValid": False, "invalidReason": "invalid_payload"}),
        (
            "settle",
            {"success": False, "errorReason": "invalid_payload", "transaction": "", "network": ""},
        ),
    ],
)
@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_bad_json_is_a_counted_400(
    fake: FakeFacilitator, client: httpx.Client, op: str, expected: Any, body: bytes
) -> None:
    """A malformed body gets 400 invalid_payload (never a crash) and still counts as a call."""
    r = client.post(f"/{op}", content=body)
    assert r.status_code == 400
    assert r.json() == expected
    assert fake.calls[op] == 1


def test_received_keeps_bodies_byte_for_byte_in_order(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """`received` records op, exact body bytes and lower-cased headers, in arrival order."""
    odd = b'{ "x402Version":2,  "paymentPayload":{}}'
    client.post("/settle", content=odd, headers={"X-Trace": "abc"})
    client.get("/supported")
    client.post("/verify", content=b"{}")
    assert [(r.op, r.body) for r in fake.received] == [
        ("settle", odd),
        ("supported", b""),
        ("verify", b"{}"),
    ]
    assert fake.received[0].headers["x-trace"] == "abc"


INVALID_CASES = [
    (
        "spec",
        "verify",
        {
            "isValid": False,
            "invalidReason": "insufficient_funds",
            "invalidMessage": "no money",
            "payer": PAYER,
        },
    ),
    (
        "spec",
        "settle",
        {
            "success": False,
            "errorReason": "insufficient_funds",
            "errorMessage": "no money",
            "transaction": "",
            "network": "eip155:84532",
            "payer": PAYER,
        },
    ),
    (
        "x402rs",
        "verify",
        {
            "isValid": False,
            "invalidReason": "insufficient_funds",
            "invalidReasonDetails": "no money",
            "payer": "",
        },
    ),
    (
        "x402rs",
        "settle",
        {
            "success": False,
            "errorReason": "insufficient_funds",
            "network": "",
            "transaction": "",
            "payer": "",
        },
    ),
    ("minimal", "verify", {"isValid": False, "invalidReason": "insufficient_funds"}),
    ("minimal", "settle", {"success": False, "errorReason": "insufficient_funds"}),
    ("error", "verify", {"isValid": False, "error": "insufficient_funds"}),
    ("error", "settle", {"success": False, "error": "insufficient_funds"}),
]


@pytest.mark.parametrize(("dialect", "op", "expected"), INVALID_CASES)
@pytest.mark.parametrize("status", [200, 400, 402])
def test_invalid_answers_in_each_dialect(
    fake: FakeFacilitator,
    client: httpx.Client,
    dialect: str,
    op: Any,
    expected: Any,
    status: int,
) -> None:
    """INVALID answers with the dialect's field names and the configured HTTP status."""
    fake.set(
        op,
        "invalid",
        dialect=dialect,
        status=status,
        reason="insufficient_funds",
        message="no money",
    )
    r = client.post(f"/{op}", json=V2_BODY)
    assert r.status_code == status
    assert r.json() == expected


def test_invalid_without_message_omits_message_fields(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """With message=None the spec and x402rs rejections carry no message field at all."""
    fake.set("*", Mode.INVALID, message=None)
    assert "invalidMessage" not in client.post("/verify", json=V2_BODY).json()
    assert "errorMessage" not in client.post("/settle", json=V2_BODY).json()
    fake.set("verify", Mode.INVALID, message=None, dialect="x402rs")
    assert "invalidReasonDetails" not in client.post("/verify", json=V2_BODY).json()


def test_invalid_and_pending_on_supported_behave_like_ok(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """Business modes do not apply to /supported, which answers normally."""
    for mode in (Mode.INVALID, Mode.PENDING):
        fake.set("supported", mode)
        r = client.get("/supported")
        assert r.status_code == 200
        assert "kinds" in r.json()


def test_pending_settle_carries_tx_and_verify_is_ok(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """PENDING settle is success:false settlement_pending with a tx hash; verify stays OK."""
    fake.set("*", Mode.PENDING)
    answer = client.post("/settle", json=V2_BODY).json()
    assert answer["success"] is False
    assert answer["errorReason"] == "settlement_pending"
    assert TX_RE.match(answer["transaction"])
    assert (answer["network"], answer["payer"]) == ("eip155:84532", PAYER)
    assert client.post("/verify", json=V2_BODY).json() == {"isValid": True, "payer": PAYER}


def test_http_error_modes(fake: FakeFacilitator, client: httpx.Client) -> None:
    """HTTP500 and HTTP429 (with Retry-After: 1) answer with JSON error bodies, on every op."""
    fake.set("*", Mode.HTTP500)
    for method, path in (("POST", "/verify"), ("POST", "/settle"), ("GET", "/supported")):
        r = client.request(method, path, json=V2_BODY if method == "POST" else None)
        assert (r.status_code, r.json()) == (500, {"error": "internal error (injected)"})
    fake.set("settle", "http429")
    r = client.post("/settle", json=V2_BODY)
    assert (r.status_code, r.json()) == (429, {"error": "rate limited (injected)"})
    assert r.headers["retry-after"] == "1"
    assert r.headers["x-fake-facilitator"] == "primary"
    assert fake.calls == {"verify": 1, "settle": 2, "supported": 1}


def test_garbage_is_a_200_html_page(fake: FakeFacilitator, client: httpx.Client) -> None:
    """GARBAGE answers 200 text/html with a proxy error page instead of JSON."""
    fake.set("verify", Mode.GARBAGE)
    r = client.post("/verify", json=V2_BODY)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.content == b"<html><body>502 Bad Gateway</body></html>"


def test_slow_and_latency_delay_the_answer(fake: FakeFacilitator, client: httpx.Client) -> None:
    """SLOW waits delay_s before a normal answer; latency_s delays every answer."""
    fake.set("verify", Mode.SLOW, delay_s=0.3)
    t0 = time.monotonic()
    assert client.post("/verify", json=V2_BODY).json()["isValid"] is True
    assert time.monotonic() - t0 >= 0.3
    with FakeFacilitator("lagged", latency_s=0.2) as lagged:
        t0 = time.monotonic()
        assert httpx.get(f"{lagged.url}/supported", timeout=5).status_code == 200
        assert time.monotonic() - t0 >= 0.2


def test_hang_causes_a_read_timeout(fake: FakeFacilitator, client: httpx.Client) -> None:
    """HANG reads the request (it is counted) and never answers, so the client's read times out."""
    fake.set("settle", Mode.HANG)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/settle", json=V2_BODY, timeout=httpx.Timeout(5.0, read=0.3))
    assert fake.calls["settle"] == 1


def test_stop_returns_promptly_and_drops_hung_connections(fake: FakeFacilitator) -> None:
    """stop() returns within ~1 s while a call hangs, and the hung client is disconnected."""
    fake.set("verify", Mode.HANG)
    outcome: queue.Queue[BaseException | httpx.Response] = queue.Queue()

    def call() -> None:
        try:
            outcome.put(httpx.post(f"{fake.url}/verify", json=V2_BODY, timeout=10))
        except BaseException as exc:
            outcome.put(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_until(lambda: fake.calls["verify"] == 1)
    t0 = time.monotonic()
    fake.stop()
    assert time.monotonic() - t0 < 1.0
    result = outcome.get(timeout=5)
    caller.join(timeout=5)
    assert isinstance(result, httpx.RemoteProtocolError | httpx.ReadError)


def test_reset_sends_rst_without_response_bytes(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """RESET aborts with a TCP RST after reading the request: no bytes, connection reset."""
    fake.set("verify", Mode.RESET)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post("/verify", json=V2_BODY)
    request = b"POST /verify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as raw:
        raw.sendall(request)
        with pytest.raises(ConnectionResetError):
            raw.recv(1024)
    assert fake.calls["verify"] == 2


def test_partial_sends_headers_then_stalls(fake: FakeFacilitator, client: httpx.Client) -> None:
    """PARTIAL sends headers and part of the body, then stalls until the client's read times out."""
    fake.set("settle", Mode.PARTIAL)
    timeout = httpx.Timeout(5.0, read=0.5)
    with client.stream("POST", "/settle", json=V2_BODY, timeout=timeout) as r:
        assert r.status_code == 200
        declared = int(r.headers["content-length"])
        chunks: list[bytes] = []

        def drain() -> None:
            for chunk in r.iter_raw():
                chunks.append(chunk)

        with pytest.raises((httpx.ReadTimeout, httpx.RemoteProtocolError)):
            drain()
    got = b"".join(chunks)
    assert 0 < len(got) < declared
    assert got.startswith(b'{"success": true')


def test_stop_refuses_connects_and_restart_reuses_port(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """After stop() connects are refused; start() again serves on the same port, counts continue."""
    client.get("/supported")
    port = fake.port
    fake.stop()
    fake.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{fake.url}/supported", timeout=2)
    assert fake.start() is fake
    assert fake.port == port
    assert httpx.get(f"{fake.url}/supported", timeout=5).status_code == 200
    assert fake.calls["supported"] == 2


def test_start_on_a_port_in_use_fails(fake: FakeFacilitator) -> None:
    """A second fake cannot take a port that another one is listening on."""
    with pytest.raises(OSError, match="in use"):
        FakeFacilitator("clash", port=fake.port).start()


def test_times_reverts_to_ok_after_n_calls(fake: FakeFacilitator, client: httpx.Client) -> None:
    """A behaviour with times=N applies to the next N calls of that op, then OK returns."""
    fake.set("verify", Mode.HTTP500, times=2)
    assert fake.behaviour("verify").times == 2
    assert client.post("/verify", json=V2_BODY).status_code == 500
    assert fake.behaviour("verify").times == 1
    assert client.post("/verify", json=V2_BODY).status_code == 500
    assert fake.behaviour("verify") == Behaviour()
    assert client.post("/verify", json=V2_BODY).status_code == 200


def test_star_sets_every_op_and_each_counts_its_own_times(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """set("*") switches all three ops; times is consumed per op."""
    fake.set("*", "http500", times=1)
    assert client.get("/supported").status_code == 500
    assert client.get("/supported").status_code == 200
    assert client.post("/verify", json=V2_BODY).status_code == 500
    assert client.post("/settle", json=V2_BODY).status_code == 500


def test_set_rejects_bad_arguments(fake: FakeFacilitator) -> None:
    """Unknown modes, ops, dialects and fields are errors at set() time, not at request time."""
    with pytest.raises(ValueError, match="nope"):
        fake.set("verify", "nope")
    with pytest.raises(ValueError, match="unknown op"):
        fake.set("refund", Mode.OK)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dialect"):
        fake.set("verify", Mode.INVALID, dialect="cdp")
    with pytest.raises(ValueError, match="status"):
        fake.set("verify", Mode.INVALID, status="402")
    with pytest.raises(TypeError):
        fake.set("verify", Mode.SLOW, delay=1)


def test_unknown_routes_and_methods_are_not_counted(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """Unknown paths get 404 and wrong methods 405, neither counted as a call."""
    assert client.get("/nope").status_code == 404
    r = client.get("/verify")
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    assert fake.calls == {"verify": 0, "settle": 0, "supported": 0}


def test_control_api_switches_behaviour_and_reports_calls(
    fake: FakeFacilitator, client: httpx.Client
) -> None:
    """/_fake/behaviour, /_fake/calls and /_fake/reset drive the fake and are not counted."""
    r = client.post("/_fake/behaviour", json={"op": "settle", "mode": "http429", "times": 1})
    assert (r.status_code, r.json()) == (200, {"ok": True})
    assert client.post("/settle", json=V2_BODY).status_code == 429
    assert client.post("/settle", json=V2_BODY).status_code == 200
    assert client.get("/_fake/calls").json() == {"verify": 0, "settle": 2, "supported": 0}
    assert client.post("/_fake/reset").json() == {"ok": True}
    assert client.get("/_fake/calls").json() == {"verify": 0, "settle": 0, "supported": 0}
    assert fake.received == []
    for bad in ({"mode": "hang"}, {"op": "verify", "mode": "nope"}, {"op": "x"}, [1]):
        r = client.post("/_fake/behaviour", json=bad)
        assert r.status_code == 400
        assert r.json()["ok"] is False
    assert client.post("/_fake/behaviour", content=b"{").status_code == 400
    assert fake.behaviour("verify") == Behaviour()


async def test_usable_from_an_async_test() -> None:
    """The fake runs on its own loop, so an async test's loop can call it without deadlock."""
    with FakeFacilitator("async") as f:
        async with httpx.AsyncClient(base_url=f.url, timeout=5) as c:
            r = await c.post("/verify", json=V2_BODY)
    assert r.json() == {"isValid": True, "payer": PAYER}


def read_ready_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def spawn(*args: str) -> subprocess.Popen[str]:
    module = "x402_aggregator.localnet.fake_facilitator"
    return subprocess.Popen(
        [sys.executable, "-m", module, "--name", "sub", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_main_runs_in_a_subprocess_and_exits_on_signal(sig: signal.Signals) -> None:
    """Run as `python -m`, it prints `ready <url>`, serves, and exits 0 on SIGTERM or SIGINT."""
    with spawn("--latency-ms", "1") as proc:
        try:
            line = read_ready_line(proc)
            match = re.fullmatch(r"ready (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line
            r = httpx.get(f"{match.group(1)}/supported", timeout=5)
            assert r.headers["x-fake-facilitator"] == "sub"
            proc.send_signal(sig)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()


def test_main_exits_by_itself_after_lifetime() -> None:
    """The foreground fake exits 0 on its own once --lifetime-s has elapsed."""
    with spawn("--lifetime-s", "0.3") as proc:
        try:
            assert read_ready_line(proc).startswith("ready ")
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
