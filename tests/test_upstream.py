"""One upstream: the request we send, and how each answer or fault becomes an Outcome."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from x402_aggregator._types import Operation
from x402_aggregator.config import UpstreamConfig
from x402_aggregator.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    ReadTimeout,
    TransportError,
)
from x402_aggregator.localnet.payloads import PAYER, v2_body
from x402_aggregator.outcome import Outcome
from x402_aggregator.protocol import PaymentKind, PaymentRequest, parse_request
from x402_aggregator.transport import HandlerTransport, UpstreamRequest, UpstreamResponse
from x402_aggregator.upstream import EXTENSION_RESPONSES, SOFT_VERIFY_REASONS, Upstream

URL = "http://127.0.0.1:9001"
NETWORK = "eip155:84532"
TX = "0x" + "cd" * 32
TOKEN = "tok-s3cr3t"
EXTENSIONS = "eyJiYXphYXIiOnsic3RhdHVzIjoic3VjY2VzcyJ9fQ=="

VERIFIED = {"isValid": True, "payer": PAYER}
SETTLED = {"success": True, "transaction": TX, "network": NETWORK, "payer": PAYER}
INVALID = {"isValid": False, "invalidReason": "insufficient_funds", "payer": PAYER}
FAILED = {
    "success": False,
    "errorReason": "insufficient_funds",
    "transaction": "",
    "network": NETWORK,
}
PENDING = {"success": False, "errorReason": "settlement_pending", "transaction": TX}

TRANSPORT_ERRORS = [
    ConnectError("POST /x: cannot connect (Connection refused)"),
    ConnectTimeout("POST /x: connect timed out"),
    ReadTimeout("POST /x: no answer within 1 s"),
    ConnectionLost("POST /x: server closed the connection"),
]
ERROR_IDS = ["connect-error", "connect-timeout", "read-timeout", "connection-lost"]


class Scripted:
    """A transport handler that gives one scripted answer (or raises) and records each request."""

    def __init__(self, answer: UpstreamResponse | TransportError) -> None:
        self.answer = answer
        self.requests: list[UpstreamRequest] = []

    async def __call__(self, request: UpstreamRequest) -> UpstreamResponse:
        self.requests.append(request)
        if isinstance(self.answer, TransportError):
            raise self.answer
        return self.answer


def response(
    status: int, body: bytes | dict[str, Any], headers: Mapping[str, str] | None = None
) -> UpstreamResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return UpstreamResponse(status, headers or {}, raw)


def upstream(answer: UpstreamResponse | TransportError, **config: Any) -> tuple[Upstream, Scripted]:
    handler = Scripted(answer)
    settings = UpstreamConfig.model_validate({"name": "primary", "url": URL, **config})
    return Upstream(settings, HandlerTransport(handler)), handler


def payment(operation: Operation = "verify") -> PaymentRequest:
    return parse_request(orjson.dumps(v2_body()), operation)


async def call(
    operation: Operation, answer: UpstreamResponse | TransportError, **config: Any
) -> Outcome:
    up, _ = upstream(answer, **config)
    return await up.call(operation, payment(operation))


# verify


async def test_a_valid_verify_is_ok_and_its_bytes_are_forwarded() -> None:
    """200 isValid true is ok, and the upstream's own bytes are kept for relaying unchanged."""
    answer = response(200, VERIFIED, {EXTENSION_RESPONSES: EXTENSIONS})

    outcome = await call("verify", answer)

    assert (outcome.kind, outcome.upstream, outcome.status) == ("ok", "primary", 200)
    assert outcome.answer == VERIFIED
    assert outcome.raw is answer.body
    assert outcome.error is None
    assert outcome.extension_responses == EXTENSIONS
    assert outcome.elapsed_s >= 0


@pytest.mark.parametrize("status", [200, 400, 402])
async def test_a_payment_reason_is_a_definitive_verify_rejection(status: int) -> None:
    """isValid false for a reason about the payment is rejected, in 200, 400 or 402."""
    outcome = await call("verify", response(status, INVALID))

    assert outcome.kind == "rejected"
    assert outcome.status == status
    assert outcome.answer == INVALID


async def test_a_rejection_in_another_dialect_is_normalised_not_forwarded_raw() -> None:
    """A rejection that needed normalising is relayed from the answer, not the upstream's bytes."""
    outcome = await call("verify", response(200, {"isValid": False, "error": "insufficient_funds"}))

    assert outcome.kind == "rejected"
    assert outcome.raw is None
    assert outcome.answer is not None
    assert outcome.answer["invalidReason"] == "insufficient_funds"


async def test_a_rejection_with_a_non_200_status_is_re_serialised() -> None:
    """A 400 rejection is relayed from its decoded answer, since we always answer 200."""
    outcome = await call("verify", response(400, INVALID))

    assert outcome.raw is None


@pytest.mark.parametrize("reason", sorted(SOFT_VERIFY_REASONS))
async def test_an_upstream_side_verify_reason_is_retryable_with_the_answer(reason: str) -> None:
    """Reasons about the upstream, not the payment (unsupported_scheme...) allow another try."""
    outcome = await call("verify", response(200, {"isValid": False, "invalidReason": reason}))

    assert outcome.kind == "retryable"
    assert outcome.answer is not None
    assert outcome.answer["invalidReason"] == reason
    assert outcome.error is not None
    assert reason in outcome.error


async def test_a_verify_failure_without_reason_is_retryable() -> None:
    """isValid false with no reason becomes unexpected_verify_error, which another may beat."""
    outcome = await call("verify", response(200, {"isValid": False}))

    assert outcome.kind == "retryable"
    assert outcome.answer is not None
    assert outcome.answer["invalidReason"] == "unexpected_verify_error"


@pytest.mark.parametrize("status", [401, 403, 407, 429, 500, 502, 503, 504])
@pytest.mark.parametrize("body", [VERIFIED, INVALID], ids=["valid", "invalid"])
async def test_a_verify_refused_for_upstream_reasons_is_retryable(
    status: int, body: dict[str, Any]
) -> None:
    """A 5xx, 429 or auth refusal says nothing about the payment: retryable whatever the body."""
    outcome = await call("verify", response(status, body))

    assert outcome.kind == "retryable"
    assert outcome.status == status


@pytest.mark.parametrize("status", [301, 404])
async def test_a_valid_verify_with_a_non_2xx_status_is_retryable(status: int) -> None:
    """isValid true under a 3xx/4xx status is not trusted."""
    outcome = await call("verify", response(status, VERIFIED))

    assert outcome.kind == "retryable"


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>Bad Gateway</html>", b"null", b"[]", b'{"detail": "oops"}', b'{"isValid"'],
    ids=["empty", "html", "null", "list", "no-flag", "truncated"],
)
@pytest.mark.parametrize("status", [200, 400, 502])
async def test_a_verify_without_a_facilitator_answer_is_retryable(status: int, body: bytes) -> None:
    """An empty or unusable body is retryable, with an error that names the status."""
    outcome = await call("verify", response(status, body))

    assert outcome.kind == "retryable"
    assert outcome.answer is None
    assert outcome.raw is None
    assert outcome.error is not None
    assert f"HTTP {status}" in outcome.error


@pytest.mark.parametrize("operation", ["verify", "settle"])
async def test_a_redirect_is_not_followed_and_names_its_target(operation: Operation) -> None:
    """A 3xx is not followed; the error names the target so the operator can fix the URL."""
    moved = UpstreamResponse(308, {"Location": "https://www.example.com/verify"}, b"")
    up, handler = upstream(moved)

    outcome = await up.call(operation, payment(operation))

    assert outcome.kind == ("retryable" if operation == "verify" else "ambiguous")
    assert outcome.error is not None
    assert "redirect to https://www.example.com/verify" in outcome.error
    assert len(handler.requests) == 1


@pytest.mark.parametrize("error", TRANSPORT_ERRORS, ids=ERROR_IDS)
async def test_every_transport_error_makes_a_verify_retryable(error: TransportError) -> None:
    """A verify has no side effects: any transport fault allows another upstream."""
    outcome = await call("verify", error)

    assert outcome.kind == "retryable"
    assert outcome.status is None
    assert outcome.answer is None
    assert outcome.error == str(error)


# settle


async def test_a_settle_success_is_ok_and_its_bytes_are_forwarded() -> None:
    """200 success true with a transaction is ok; the bytes are relayed unchanged."""
    answer = response(200, SETTLED, {EXTENSION_RESPONSES: EXTENSIONS})

    outcome = await call("settle", answer)

    assert outcome.kind == "ok"
    assert outcome.answer == SETTLED
    assert outcome.raw is answer.body
    assert outcome.extension_responses == EXTENSIONS


async def test_a_settle_success_without_a_transaction_is_ok_and_forwarded_unchanged() -> None:
    """Batch-settlement vouchers answer success with an empty transaction: a success, as sent."""
    voucher = {"success": True, "transaction": "", "network": NETWORK, "extensions": {"v": 1}}
    answer = response(200, voucher, {EXTENSION_RESPONSES: EXTENSIONS})

    outcome = await call("settle", answer)

    assert outcome.kind == "ok"
    assert outcome.answer == voucher
    assert outcome.raw is answer.body
    assert outcome.extension_responses == EXTENSIONS


async def test_a_settle_success_without_network_gets_the_requests() -> None:
    """A success lacking network is ok, with the request's network filled in."""
    outcome = await call("settle", response(200, {"success": True, "transaction": TX}))

    assert outcome.kind == "ok"
    assert outcome.answer == {"success": True, "transaction": TX, "network": NETWORK}
    assert outcome.raw is None


@pytest.mark.parametrize("status", [200, 400])
async def test_a_settle_failure_in_200_or_400_is_rejected(status: int) -> None:
    """success false with a 200 or 400 is a definitive failure."""
    outcome = await call("settle", response(status, FAILED))

    assert outcome.kind == "rejected"
    assert outcome.answer == FAILED


@pytest.mark.parametrize("status", [200, 500])
async def test_settlement_pending_is_ambiguous_with_its_answer(status: int) -> None:
    """settlement_pending is ambiguous, and keeps its answer and transaction for the caller."""
    outcome = await call("settle", response(status, PENDING, {EXTENSION_RESPONSES: EXTENSIONS}))

    assert outcome.kind == "ambiguous"
    assert outcome.answer is not None
    assert outcome.answer["errorReason"] == "settlement_pending"
    assert outcome.answer["transaction"] == TX
    assert outcome.raw is None
    assert outcome.extension_responses == EXTENSIONS


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, FAILED),
        (502, FAILED),
        (503, b"Service Unavailable"),
        (402, FAILED),
        (402, {"error": "payment required"}),
        (200, b"<html>"),
        (200, b""),
        (200, {"success": True, "network": NETWORK, "transaction": None}),
        (200, {"success": True, "transaction": 42}),
        (400, SETTLED),
        (404, SETTLED),
        (500, SETTLED),
    ],
    ids=[
        "500-failure",
        "502-failure",
        "503-text",
        "402-failure",
        "402-other",
        "200-html",
        "200-empty",
        "success-null-tx",
        "success-number-tx",
        "success-400",
        "success-404",
        "success-500",
    ],
)
async def test_a_settle_without_a_trustworthy_answer_is_ambiguous_with_no_answer(
    status: int, body: bytes | dict[str, Any]
) -> None:
    """After a settle may have arrived, no usable answer is ambiguous, and nothing is relayed."""
    outcome = await call("settle", response(status, body, {EXTENSION_RESPONSES: EXTENSIONS}))

    assert outcome.kind == "ambiguous"
    assert outcome.answer is None
    assert outcome.raw is None
    assert outcome.status == status
    assert outcome.error is not None
    assert f"HTTP {status}" in outcome.error


@pytest.mark.parametrize("error", TRANSPORT_ERRORS[:2], ids=ERROR_IDS[:2])
async def test_a_settle_that_never_connected_is_retryable(error: TransportError) -> None:
    """A refused or timed-out connection proves the settle never arrived: retryable."""
    outcome = await call("settle", error)

    assert outcome.kind == "retryable"
    assert outcome.answer is None


@pytest.mark.parametrize("error", TRANSPORT_ERRORS[2:], ids=ERROR_IDS[2:])
async def test_a_settle_lost_after_sending_is_ambiguous(error: TransportError) -> None:
    """A read timeout or a dropped connection after sending is ambiguous: it may have arrived."""
    outcome = await call("settle", error)

    assert outcome.kind == "ambiguous"
    assert outcome.answer is None
    assert outcome.error == str(error)


# the outgoing request


async def test_a_verify_is_posted_with_the_callers_bytes_and_the_call_budget() -> None:
    """Verify POSTs the caller's bytes to <url>/verify, pooled, within timeout_s."""
    up, handler = upstream(response(200, VERIFIED), timeout_s=7, connect_timeout_s=0.5)
    request = payment("verify")

    await up.call("verify", request)

    [sent] = handler.requests
    assert (sent.method, sent.url) == ("POST", f"{URL}/verify")
    assert sent.body is request.body
    assert (sent.timeout_s, sent.connect_timeout_s) == (7, 0.5)
    assert sent.fresh_connection is False
    assert sent.headers["Content-Type"] == "application/json"
    assert "Authorization" not in sent.headers


@pytest.mark.parametrize(
    ("config", "budget"),
    [({"timeout_s": 7}, 60.0), ({"timeout_s": 7, "settle_timeout_s": 90}, 90.0)],
    ids=["default", "configured"],
)
async def test_a_settle_is_posted_on_a_fresh_connection_with_the_settle_budget(
    config: dict[str, float], budget: float
) -> None:
    """Settle POSTs the caller's bytes to <url>/settle, on a new connection, in settle_timeout."""
    up, handler = upstream(response(200, SETTLED), **config)
    request = payment("settle")

    await up.call("settle", request)

    [sent] = handler.requests
    assert (sent.method, sent.url) == ("POST", f"{URL}/settle")
    assert sent.body is request.body
    assert sent.timeout_s == budget
    assert sent.fresh_connection is True


async def test_a_path_prefix_is_kept_and_a_trailing_slash_dropped() -> None:
    """A base URL with a path prefix gets /verify appended after it, without a double slash."""
    up, handler = upstream(response(200, VERIFIED), url="https://api.example.com/v2/x402/")

    await up.call("verify", payment())

    assert handler.requests[0].url == "https://api.example.com/v2/x402/verify"


async def test_bearer_auth_and_static_headers_are_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream gets Authorization: Bearer from the environment, and its static headers."""
    monkeypatch.setenv("X402_TEST_UPSTREAM_TOKEN", TOKEN)
    up, handler = upstream(
        response(200, VERIFIED),
        auth={"type": "bearer", "token_env": "X402_TEST_UPSTREAM_TOKEN"},
        headers={"X-Tenant": "shop-1"},
    )

    await up.call("settle", payment("settle"))

    headers = handler.requests[0].headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-Tenant"] == "shop-1"
    assert TOKEN not in repr(up)


async def test_the_extension_responses_header_is_found_in_any_case() -> None:
    """EXTENSION-RESPONSES is read from case-insensitive headers, as aiohttp gives them."""
    headers = CIMultiDict({"Extension-Responses": EXTENSIONS})

    outcome = await call("verify", response(200, VERIFIED, headers))

    assert outcome.extension_responses == EXTENSIONS


async def test_a_rejection_keeps_the_extension_responses_header() -> None:
    """A definitive rejection carries the upstream's EXTENSION-RESPONSES too."""
    outcome = await call("settle", response(200, FAILED, {EXTENSION_RESPONSES: EXTENSIONS}))

    assert outcome.kind == "rejected"
    assert outcome.extension_responses == EXTENSIONS


# probe


async def test_a_probe_returns_the_upstreams_capabilities() -> None:
    """A 200 /supported answer is indexed into Capabilities; the GET uses the probe budget."""
    kinds = [{"x402Version": 2, "scheme": "exact", "network": NETWORK}]
    up, handler = upstream(response(200, {"kinds": kinds}), connect_timeout_s=3)

    capabilities = await up.probe(1.5)

    assert capabilities.supports(PaymentKind(2, "exact", NETWORK))
    [sent] = handler.requests
    assert (sent.method, sent.url, sent.body) == ("GET", f"{URL}/supported", None)
    assert (sent.timeout_s, sent.connect_timeout_s) == (1.5, 1.5)


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (503, b'{"kinds": []}', "HTTP 503"),
        (404, b"not found", "HTTP 404"),
        (200, b"<html>", "not JSON"),
        (200, b"", "not JSON"),
        (200, b'{"kinds": "all"}', "kinds"),
    ],
    ids=["503", "404", "html", "empty", "bad-shape"],
)
async def test_a_failed_probe_raises_value_error(status: int, body: bytes, match: str) -> None:
    """A non-200 or non-JSON /supported, or one without a kinds list, raises ValueError."""
    up, _ = upstream(response(status, body))

    with pytest.raises(ValueError, match=match):
        await up.probe(1.0)


async def test_a_probe_transport_error_propagates() -> None:
    """A transport fault during a probe is raised to the prober as our TransportError."""
    up, _ = upstream(ConnectError("GET /supported: cannot connect"))

    with pytest.raises(ConnectError):
        await up.probe(1.0)
