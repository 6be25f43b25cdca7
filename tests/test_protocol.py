"""The wire format: parsing verify/settle bodies, failure bodies, normalising upstream answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from x402_aggregator._types import Operation
from x402_aggregator.errors import RequestError
from x402_aggregator.localnet.payloads import PAYER, USDC_BASE_SEPOLIA, v1_body, v2_body
from x402_aggregator.protocol import (
    INVALID_PAYLOAD,
    INVALID_REQUIREMENTS,
    INVALID_VERSION,
    UNEXPECTED_SETTLE_ERROR,
    UNEXPECTED_VERIFY_ERROR,
    PaymentKind,
    failure_body,
    network_hint,
    normalise_answer,
    parse_request,
    reason_of,
)

NETWORK = "eip155:84532"
TX = "0x" + "ab" * 32
SOLANA_FEE_PAYER = "CKPKJWNdJEqa81x7CkZ14BVPiY6y16Sxs7owznqtWYp5"


def copied(body: dict[str, Any]) -> dict[str, Any]:
    """A deep copy: the payload builders share the requirements dict with ``accepted``."""
    value: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return value


def refused(body: bytes, operation: Operation = "verify") -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(body, operation)
    return caught.value


# parse_request


@pytest.mark.parametrize("operation", ["verify", "settle"])
def test_a_v2_body_is_parsed_for_routing(operation: Operation) -> None:
    """A v2 body yields kind (2, scheme, CAIP-2 network) and payer, with no bound signer."""
    body = orjson.dumps(v2_body())

    request = parse_request(body, operation)

    assert request.kind == PaymentKind(2, "exact", NETWORK)
    assert request.payer == PAYER
    assert request.bound_signer is None
    assert request.body is body


def test_a_v1_body_is_parsed_for_routing() -> None:
    """A v1 body yields kind (1, exact, legacy network name) and the payer."""
    request = parse_request(orjson.dumps(v1_body(network="base")), "settle")

    assert request.kind == PaymentKind(1, "exact", "base")
    assert request.payer == PAYER
    assert request.bound_signer is None


def test_the_body_is_kept_byte_for_byte() -> None:
    """The caller's bytes are kept as given: odd spacing and unknown fields survive."""
    data = v2_body(extensions={"bazaar": {"info": {"x": 1}}})
    data["paymentPayload"]["payload"]["futureField"] = {"kept": [1.50, "\u00e9"]}
    body = b"  " + orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"

    request = parse_request(body, "verify")

    assert request.body == body


@pytest.mark.parametrize(
    ("extra", "signer"),
    [
        ({"feePayer": SOLANA_FEE_PAYER}, SOLANA_FEE_PAYER),
        ({"facilitatorAddress": "0x1234"}, "0x1234"),
        ({"feePayer": SOLANA_FEE_PAYER, "facilitatorAddress": "0x1234"}, SOLANA_FEE_PAYER),
        ({"feePayer": ""}, None),
        ({"feePayer": 42}, None),
    ],
    ids=["feePayer", "facilitatorAddress", "feePayer-first", "empty", "not-text"],
)
def test_the_bound_signer_comes_from_the_requirements_extra(
    extra: dict[str, Any], signer: str | None
) -> None:
    """extra.feePayer, else extra.facilitatorAddress, names the signer the payment is bound to."""
    request = parse_request(orjson.dumps(v2_body(extra=extra)), "verify")

    assert request.bound_signer == signer


def test_a_permit2_payer_is_found() -> None:
    """The payer of a Permit2 payload is read from permit2Authorization.from."""
    data = copied(v2_body())
    inner = data["paymentPayload"]["payload"]
    inner["permit2Authorization"] = inner.pop("authorization")

    assert parse_request(orjson.dumps(data), "verify").payer == PAYER


def test_payment_identity_is_the_authorization_not_the_envelope() -> None:
    """EIP-3009: (network, asset, payer, nonce); Permit2: (network, payer, nonce); else a hash."""
    nonce = "0x" + "11" * 32
    eip3009 = parse_request(orjson.dumps(v2_body(nonce=nonce)), "settle")
    other_envelope = copied(v2_body(nonce=nonce))
    other_envelope["paymentPayload"]["resource"]["url"] = "https://elsewhere.example/"
    permit = copied(v2_body(nonce=nonce))
    inner = permit["paymentPayload"]["payload"]
    inner["permit2Authorization"] = inner.pop("authorization")
    unknown = copied(v2_body())
    unknown["paymentPayload"]["payload"] = {"transaction": "base64..."}

    assert eip3009.identity == f"eip155:84532|{USDC_BASE_SEPOLIA}|{PAYER}|{nonce}".lower()
    assert parse_request(orjson.dumps(other_envelope), "settle").identity == eip3009.identity
    assert (
        parse_request(orjson.dumps(permit), "settle").identity
        == f"eip155:84532|permit2|{PAYER}|{int(nonce, 16)}".lower()  # Permit2 nonces: uint256
    )
    assert parse_request(orjson.dumps(unknown), "settle").identity.startswith("sha256:")


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"\xff\xfe"],
    ids=["empty", "truncated", "text", "binary"],
)
def test_a_body_that_is_not_json_is_invalid_payload(body: bytes) -> None:
    """A body that does not decode as JSON is refused with invalid_payload."""
    assert refused(body).reason == INVALID_PAYLOAD


@pytest.mark.parametrize("body", [b"[]", b"42", b'"text"', b"null"])
def test_a_body_that_is_not_an_object_is_invalid_payload(body: bytes) -> None:
    """A JSON body that is not an object is refused with invalid_payload."""
    error = refused(body)

    assert error.reason == INVALID_PAYLOAD
    assert error.status == 400


@pytest.mark.parametrize("payload", [None, "missing", [], "text"])
def test_a_missing_payment_payload_is_invalid_payload(payload: object) -> None:
    """A body without a paymentPayload object is refused with invalid_payload."""
    data = copied(v2_body())
    if payload == "missing":
        del data["paymentPayload"]
    else:
        data["paymentPayload"] = payload

    assert refused(orjson.dumps(data), "settle").reason == INVALID_PAYLOAD


def test_a_payload_failing_the_model_is_invalid_payload() -> None:
    """A paymentPayload lacking a required field is refused with invalid_payload, naming it."""
    data = copied(v2_body())
    del data["paymentPayload"]["payload"]

    error = refused(orjson.dumps(data))

    assert error.reason == INVALID_PAYLOAD
    assert "paymentPayload.payload" in error.message


@pytest.mark.parametrize("requirements", ["missing", None, [], "exact"])
def test_missing_requirements_are_invalid_payment_requirements(requirements: object) -> None:
    """A body without a paymentRequirements object is refused with invalid_payment_requirements."""
    data = copied(v2_body())
    if requirements == "missing":
        del data["paymentRequirements"]
    else:
        data["paymentRequirements"] = requirements

    assert refused(orjson.dumps(data)).reason == INVALID_REQUIREMENTS


@pytest.mark.parametrize("build", [v1_body, v2_body], ids=["v1", "v2"])
def test_requirements_failing_the_model_are_invalid_payment_requirements(
    build: Callable[[], dict[str, Any]],
) -> None:
    """Requirements without payTo are refused: invalid_payment_requirements, naming the field."""
    data = copied(build())
    del data["paymentRequirements"]["payTo"]

    error = refused(orjson.dumps(data))

    assert error.reason == INVALID_REQUIREMENTS
    assert "paymentRequirements.payTo" in error.message


@pytest.mark.parametrize(
    ("top", "inner"),
    [(3, 3), (0, 0), ("2", "2"), (None, None), (2.5, 2.5)],
    ids=["three", "zero", "string", "null", "float"],
)
def test_an_unknown_version_is_invalid_x402_version(top: object, inner: object) -> None:
    """A version other than the integers 1 and 2 is refused with invalid_x402_version."""
    data = copied(v2_body())
    data["x402Version"] = top
    data["paymentPayload"]["x402Version"] = inner

    assert refused(orjson.dumps(data)).reason == INVALID_VERSION


@pytest.mark.parametrize("version", [True, False])
def test_a_boolean_payload_version_is_invalid_x402_version(version: bool) -> None:
    """A JSON boolean is not a version, although Python counts True as 1."""
    data = copied(v1_body())
    data["x402Version"] = data["paymentPayload"]["x402Version"] = version

    assert refused(orjson.dumps(data)).reason == INVALID_VERSION


@pytest.mark.parametrize("top", [True, 1.0], ids=["bool", "float"])
def test_a_non_integer_top_level_version_is_invalid_x402_version(top: object) -> None:
    """A top-level x402Version of true or 1.0 is refused, even when the payload says 1."""
    data = copied(v1_body())
    data["x402Version"] = top

    assert refused(orjson.dumps(data)).reason == INVALID_VERSION


@pytest.mark.parametrize(("top", "inner"), [(1, 2), (2, 1)])
def test_a_top_level_version_mismatch_is_invalid_x402_version(top: int, inner: int) -> None:
    """The top-level x402Version must equal paymentPayload.x402Version."""
    data = copied(v2_body() if inner == 2 else v1_body())
    data["x402Version"] = top

    error = refused(orjson.dumps(data))

    assert error.reason == INVALID_VERSION
    assert "does not match" in error.message


def test_a_missing_top_level_version_is_taken_from_the_payload() -> None:
    """Without a top-level x402Version, the payload's version decides."""
    data = copied(v2_body())
    del data["x402Version"]

    assert parse_request(orjson.dumps(data), "verify").kind.version == 2


# network_hint and failure_body


@pytest.mark.parametrize(
    ("body", "network"),
    [
        (orjson.dumps(v2_body()), NETWORK),
        (b'{"paymentRequirements": {"network": 7}}', ""),
        (b'{"paymentRequirements": []}', ""),
        (b"[1]", ""),
        (b"{", ""),
    ],
)
def test_network_hint_is_best_effort(body: bytes, network: str) -> None:
    """network_hint returns the requirements' network, or "" for anything unusable."""
    assert network_hint(body) == network


def test_a_verify_failure_body_has_the_verify_shape() -> None:
    """A verify failure is isValid false with invalidReason and invalidMessage."""
    assert failure_body("verify", "invalid_payload", "bad", NETWORK) == {
        "isValid": False,
        "invalidReason": "invalid_payload",
        "invalidMessage": "bad",
    }


def test_a_settle_failure_body_has_the_settle_shape() -> None:
    """A settle failure carries errorReason, errorMessage, an empty transaction and the network."""
    assert failure_body("settle", "invalid_payload", "bad", NETWORK) == {
        "success": False,
        "errorReason": "invalid_payload",
        "errorMessage": "bad",
        "transaction": "",
        "network": NETWORK,
    }
    assert failure_body("settle", "x", "y")["network"] == ""


# normalise_answer: verify


@pytest.mark.parametrize(
    "answer",
    [
        {"isValid": True, "payer": PAYER},
        {"isValid": True, "payer": PAYER, "extensions": {"bazaar": {}}, "extra": {"a": 1}},
        {"isValid": False, "invalidReason": "insufficient_funds", "payer": PAYER},
        {"isValid": False, "invalidReason": "insufficient_funds", "invalidMessage": "poor"},
    ],
    ids=["valid", "valid-unknown-fields", "invalid", "invalid-with-message"],
)
def test_a_spec_shaped_verify_answer_is_returned_as_is(answer: dict[str, Any]) -> None:
    """A verify answer already in spec shape comes back as the very same dict."""
    assert normalise_answer("verify", answer, NETWORK) is answer


@pytest.mark.parametrize("key", ["error", "errorReason", "reason"])
def test_a_verify_reason_under_another_name_is_copied_to_invalid_reason(key: str) -> None:
    """{"isValid": false, "error": R} and similar dialects become invalidReason R."""
    answer = {"isValid": False, key: "insufficient_funds"}

    out = normalise_answer("verify", answer, NETWORK)

    assert out == {
        "isValid": False,
        key: "insufficient_funds",
        "invalidReason": "insufficient_funds",
    }
    assert out is not answer


def test_x402_rs_reason_details_become_the_invalid_message() -> None:
    """x402-rs invalidReasonDetails is copied to invalidMessage; its own field is kept."""
    answer = {
        "isValid": False,
        "invalidReason": "invalid_exact_evm_payload_signature",
        "invalidReasonDetails": "signature mismatch",
        "payer": "",
    }

    out = normalise_answer("verify", answer, NETWORK)

    assert out is not None
    assert out["invalidMessage"] == "signature mismatch"
    assert out["invalidReasonDetails"] == "signature mismatch"
    assert out["invalidReason"] == "invalid_exact_evm_payload_signature"
    assert "invalidMessage" not in answer  # the upstream's dict is not mutated


@pytest.mark.parametrize("reason", ["missing", "", None, 42])
def test_a_verify_failure_without_reason_is_unexpected_verify_error(reason: object) -> None:
    """isValid false without a usable reason becomes unexpected_verify_error."""
    answer: dict[str, Any] = {"isValid": False}
    if reason != "missing":
        answer["invalidReason"] = reason

    out = normalise_answer("verify", answer, NETWORK)

    assert out is not None
    assert out["invalidReason"] == UNEXPECTED_VERIFY_ERROR
    assert reason_of("verify", out) == UNEXPECTED_VERIFY_ERROR


# normalise_answer: settle


def test_a_spec_shaped_settle_success_is_returned_as_is() -> None:
    """A settle success with transaction and network comes back as the very same dict."""
    answer = {"success": True, "transaction": TX, "network": NETWORK, "extensions": {"a": 1}}

    assert normalise_answer("settle", answer, NETWORK) is answer


def test_a_spec_shaped_settle_failure_is_returned_as_is() -> None:
    """A settle failure with reason, transaction and network comes back as the very same dict."""
    answer = {
        "success": False,
        "errorReason": "insufficient_funds",
        "errorMessage": "poor",
        "transaction": "",
        "network": NETWORK,
        "extra": {"cdp": True},
    }

    assert normalise_answer("settle", answer, NETWORK) is answer


def test_a_settle_failure_gets_transaction_and_network_filled() -> None:
    """A failure lacking transaction and network gets "" and the request's network."""
    answer = {"success": False, "errorReason": "insufficient_funds", "extensions": {"x": 1}}

    assert normalise_answer("settle", answer, NETWORK) == {
        "success": False,
        "errorReason": "insufficient_funds",
        "extensions": {"x": 1},
        "transaction": "",
        "network": NETWORK,
    }


@pytest.mark.parametrize("success", [True, False])
def test_an_empty_network_from_x402_rs_is_replaced(success: bool) -> None:
    """x402-rs's network "" is replaced by the request's network, success or not."""
    answer: dict[str, Any] = {"success": success, "transaction": TX, "network": "", "payer": ""}
    if not success:
        answer.update(transaction="", errorReason="transaction_failed")

    out = normalise_answer("settle", answer, NETWORK)

    assert out is not None
    assert out["network"] == NETWORK
    assert out["payer"] == ""
    assert answer["network"] == ""


@pytest.mark.parametrize(
    ("key", "message_key"),
    [("error", "message"), ("invalidReason", "invalidMessage"), ("reason", "detail")],
)
def test_a_settle_reason_under_another_name_becomes_error_reason(
    key: str, message_key: str
) -> None:
    """Settle failures in other dialects get errorReason and errorMessage in spec names."""
    answer = {"success": False, key: "insufficient_funds", message_key: "poor"}

    out = normalise_answer("settle", answer, NETWORK)

    assert out is not None
    assert (out["errorReason"], out["errorMessage"]) == ("insufficient_funds", "poor")
    assert (out[key], out[message_key]) == ("insufficient_funds", "poor")


def test_a_settle_failure_without_reason_is_unexpected_settle_error() -> None:
    """success false without any reason becomes unexpected_settle_error."""
    out = normalise_answer("settle", {"success": False}, NETWORK)

    assert out is not None
    assert out["errorReason"] == UNEXPECTED_SETTLE_ERROR
    assert (out["transaction"], out["network"]) == ("", NETWORK)


def test_settlement_pending_keeps_its_transaction() -> None:
    """A settlement_pending failure keeps the broadcast transaction hash."""
    answer = {"success": False, "errorReason": "settlement_pending", "transaction": TX}

    out = normalise_answer("settle", answer, NETWORK)

    assert out is not None
    assert out["transaction"] == TX


@pytest.mark.parametrize("transaction", [None, 123, ["0xab"]])
def test_a_settle_success_with_a_transaction_that_is_not_text_is_not_an_answer(
    transaction: object,
) -> None:
    """success true with a transaction that is not a string cannot be reported."""
    answer: dict[str, Any] = {"success": True, "network": NETWORK, "transaction": transaction}

    assert normalise_answer("settle", answer, NETWORK) is None


@pytest.mark.parametrize("transaction", ["missing", ""])
def test_a_settle_success_without_a_transaction_is_a_success(transaction: str) -> None:
    """Batch-settlement vouchers (and zero-amount upto settles) succeed with no transaction."""
    answer: dict[str, Any] = {"success": True, "network": NETWORK, "extensions": {"x": 1}}
    if transaction != "missing":
        answer["transaction"] = transaction

    out = normalise_answer("settle", answer, NETWORK)

    assert out == {**answer, "transaction": ""}


@pytest.mark.parametrize("operation", ["verify", "settle"])
@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        "ok",
        1,
        {},
        {"detail": "Internal Server Error"},
        {"isValid": "true"},
        {"success": 1},
    ],
)
def test_anything_without_the_boolean_flag_is_not_an_answer(
    operation: Operation, answer: object
) -> None:
    """A non-object, or an object without a boolean isValid/success, is not a facilitator answer."""
    assert normalise_answer(operation, answer, NETWORK) is None


def test_a_verify_flag_is_not_a_settle_answer() -> None:
    """Each operation looks for its own flag: isValid does not answer a settle."""
    assert normalise_answer("settle", {"isValid": True}, NETWORK) is None
    assert normalise_answer("verify", {"success": True, "transaction": TX}, NETWORK) is None


def test_a_v1_network_name_and_its_caip2_id_are_one_payment() -> None:
    """The same authorization sent as base-sepolia and as eip155:84532 has one identity."""
    nonce = "0x" + "22" * 32
    v1 = parse_request(orjson.dumps(v1_body(nonce=nonce)), "settle")
    v2 = parse_request(orjson.dumps(v2_body(nonce=nonce)), "settle")

    assert v1.identity == v2.identity
