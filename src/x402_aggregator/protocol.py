"""The x402 facilitator wire format: parse requests for routing, shape and normalise answers.

Requests are parsed only to route and validate; the caller's bytes are what gets forwarded, so
fields the SDK models do not know (Solana payloads, ``upto``, extensions) pass through intact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from ._types import JSONObject, Operation
from .errors import RequestError
from .schemes import PaymentFacts, PaymentScheme, read_payment

SUPPORTED_VERSIONS = (1, 2)

# Reason codes this module emits (spec section 9 names where one exists).
INVALID_PAYLOAD = "invalid_payload"
INVALID_REQUIREMENTS = "invalid_payment_requirements"
INVALID_VERSION = "invalid_x402_version"
INVALID_NETWORK = "invalid_network"
UNSUPPORTED_SCHEME = "unsupported_scheme"
SETTLEMENT_PENDING = "settlement_pending"
SETTLEMENT_OUTCOME_UNKNOWN = "settlement_outcome_unknown"
DUPLICATE_SETTLEMENT = "duplicate_settlement"
NO_UPSTREAM_AVAILABLE = "no_upstream_available"
REQUEST_TOO_LARGE = "request_too_large"
UNEXPECTED_VERIFY_ERROR = "unexpected_verify_error"
UNEXPECTED_SETTLE_ERROR = "unexpected_settle_error"

_PAYLOAD_MODELS: dict[int, type[BaseModel]] = {1: PaymentPayloadV1, 2: PaymentPayload}
_REQUIREMENTS_MODELS: dict[int, type[BaseModel]] = {
    1: PaymentRequirementsV1,
    2: PaymentRequirements,
}

# Upstreams name the same fields differently (spec, CDP, x402-rs, the TS examples).
_REASON_KEYS = {
    "verify": ("invalidReason", "errorReason", "error", "reason"),
    "settle": ("errorReason", "invalidReason", "error", "reason"),
}
_MESSAGE_KEYS = {
    "verify": ("invalidMessage", "invalidReasonDetails", "errorMessage", "message", "detail"),
    "settle": ("errorMessage", "invalidMessage", "invalidReasonDetails", "message", "detail"),
}


@dataclass(frozen=True, slots=True)
class PaymentKind:
    """What a facilitator must support to handle a payment: ``/supported`` lists these."""

    version: int
    scheme: str
    network: str


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """A parsed ``/verify`` or ``/settle`` body; ``body`` is the caller's bytes, forwarded as is."""

    kind: PaymentKind
    body: bytes = field(repr=False)
    #: The payment's kind family (see :mod:`.schemes`) and what it read from the payment.
    scheme: PaymentScheme = field(repr=False)
    facts: PaymentFacts

    @property
    def identity(self) -> str:
        """Stable identity of the signed payment: the ledger's key, never including the amount."""
        return self.facts.identity

    @property
    def payer(self) -> str | None:
        return self.facts.payer

    @property
    def bound_signer(self) -> str | None:
        """Address that must sign for this payment (Solana ``feePayer``, ``upto`` facilitator)."""
        return self.facts.bound_signer


def parse_request(body: bytes, operation: Operation) -> PaymentRequest:
    """Validate a facilitator request body and extract what routing needs.

    Raises :class:`RequestError` with the x402 reason for anything an upstream must not see.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RequestError(INVALID_PAYLOAD, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError(INVALID_PAYLOAD, "request body must be a JSON object")
    payload = data.get("paymentPayload")
    requirements = data.get("paymentRequirements")
    if not isinstance(payload, dict):
        raise RequestError(INVALID_PAYLOAD, "paymentPayload is missing or not an object")
    if not isinstance(requirements, dict):
        raise RequestError(INVALID_REQUIREMENTS, "paymentRequirements is missing or not an object")
    version = _version(data, payload)
    _validate(_PAYLOAD_MODELS[version], payload, INVALID_PAYLOAD, "paymentPayload")
    _validate(
        _REQUIREMENTS_MODELS[version], requirements, INVALID_REQUIREMENTS, "paymentRequirements"
    )
    kind = PaymentKind(version, requirements["scheme"], requirements["network"])
    scheme, facts = read_payment(kind.network, requirements, payload)
    return PaymentRequest(kind=kind, body=body, scheme=scheme, facts=facts)


def _version(data: JSONObject, payload: JSONObject) -> int:
    version = payload.get("x402Version", data.get("x402Version"))
    top = data.get("x402Version", version)
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise RequestError(
            INVALID_VERSION,
            f"x402Version {version!r} is not supported; expected one of {SUPPORTED_VERSIONS}",
        )
    if type(top) is not int or top != version:
        raise RequestError(
            INVALID_VERSION,
            f"x402Version {top!r} does not match paymentPayload.x402Version {version}",
        )
    return version


def _validate(model: type[BaseModel], data: JSONObject, reason: str, where: str) -> None:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise RequestError(reason, problems) from None


def network_hint(body: bytes) -> str:
    """Best-effort network of a request that failed validation, for the error body."""
    try:
        data = orjson.loads(body)
        network = data["paymentRequirements"]["network"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""
    return network if isinstance(network, str) else ""


def failure_body(operation: Operation, reason: str, message: str, network: str = "") -> JSONObject:
    """The x402-shaped body of a failed verify or settle."""
    if operation == "verify":
        return {"isValid": False, "invalidReason": reason, "invalidMessage": message}
    return {
        "success": False,
        "errorReason": reason,
        "errorMessage": message,
        "transaction": "",
        "network": network,
    }


def normalise_answer(operation: Operation, answer: Any, network: str) -> JSONObject | None:
    """Return an upstream's answer in the spec shape, or None if it is not a facilitator answer.

    The same dict comes back when nothing had to change, so the caller can forward the
    upstream's bytes untouched. Unknown fields (``extensions``, ``extra``) are kept.
    """
    flag = "isValid" if operation == "verify" else "success"
    if not isinstance(answer, dict) or not isinstance(answer.get(flag), bool):
        return None
    if answer[flag]:
        if operation == "verify":
            return answer
        return _normalise_settled(answer, network)
    return _normalise_failure(operation, answer, network)


def _normalise_settled(answer: JSONObject, network: str) -> JSONObject | None:
    # An empty transaction is a success: batch-settlement vouchers and zero-amount ``upto``
    # settles move nothing on chain now. A transaction that is not text is not an answer.
    transaction = answer.get("transaction", "")
    if not isinstance(transaction, str):
        return None
    out = answer if "transaction" in answer else {**answer, "transaction": ""}
    if isinstance(answer.get("network"), str) and answer["network"]:
        return out
    return {**out, "network": network}


def _normalise_failure(operation: Operation, answer: JSONObject, network: str) -> JSONObject:
    reason_key, message_key = (
        ("invalidReason", "invalidMessage")
        if operation == "verify"
        else ("errorReason", "errorMessage")
    )
    reason = _first_text(answer, _REASON_KEYS[operation])
    message = _first_text(answer, _MESSAGE_KEYS[operation])
    out = answer
    if answer.get(reason_key) != reason or not reason:
        out = {**out, reason_key: reason or _unexpected(operation)}
    if message and not isinstance(answer.get(message_key), str):
        out = {**out, message_key: message}
    if operation == "settle":
        if not isinstance(out.get("transaction"), str):
            out = {**out, "transaction": ""}
        if not isinstance(out.get("network"), str) or not out["network"]:
            out = {**out, "network": network}
    return out


def _first_text(answer: JSONObject, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = answer.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _unexpected(operation: Operation) -> str:
    return UNEXPECTED_VERIFY_ERROR if operation == "verify" else UNEXPECTED_SETTLE_ERROR


def reason_of(operation: Operation, answer: JSONObject) -> str:
    """The reason code of a normalised failure answer."""
    return str(answer.get("invalidReason" if operation == "verify" else "errorReason", ""))
