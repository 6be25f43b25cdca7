"""The HTTP API as an OpenAPI 3.1 document, served at ``/openapi.json`` and checked by a test."""

from __future__ import annotations

from typing import Any

from ._types import JSONObject
from ._version import __version__
from .ledger import STATES as LEDGER_STATES
from .metrics import STATES

_TEXT = {"type": "string"}
_NULLABLE_TEXT = {"type": ["string", "null"]}


def _ref(name: str) -> JSONObject:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JSONObject, description: str) -> JSONObject:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Only when server.api_keys_env is set; ``{}`` says the API is also served without a key.
_API_KEY_SECURITY: list[dict[str, list[str]]] = [
    {"apiKeyBearer": []},
    {"apiKeyHeader": []},
    {},
]


def _refusals(body: str) -> dict[str, JSONObject]:
    """401 and 429 of a path guarded by API keys, with ``body`` the x402-shaped answer."""
    integer = {"type": "integer", "minimum": 1}
    return {
        "401": {
            **_json(_ref(body), "Missing or unknown API key (reason unauthorized)."),
            "headers": {"WWW-Authenticate": {"schema": _TEXT}},
        },
        "429": {
            **_json(_ref(body), "This API key is over its rate (reason rate_limited)."),
            "headers": {"Retry-After": {"schema": integer, "description": "Seconds."}},
        },
    }


def _payment_operation(summary: str, answer: str, failure: str) -> JSONObject:
    return {
        "summary": summary,
        "security": _API_KEY_SECURITY,
        "parameters": [
            {
                "name": "X-Request-Id",
                "in": "header",
                "required": False,
                "schema": _TEXT,
                "description": "Propagated to the upstream and echoed back; made up if absent.",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("PaymentRequest")}},
        },
        "responses": {
            "200": _json(_ref(answer), "The answer (business failures included), spec shape."),
            "400": _json(_ref(answer), "Malformed request: invalid_payload, invalid_x402_version."),
            "413": _json(_ref(answer), "Body over server.max_body_bytes."),
            **_refusals(answer),
            "502": _json(_ref(failure), "No upstream gave a usable answer; each one's failure."),
            "503": _json(_ref(answer), "Every candidate upstream is drained."),
        },
    }


def _discovery_operation() -> JSONObject:
    def query(name: str, schema: JSONObject, description: str) -> JSONObject:
        return {"name": name, "in": "query", "schema": schema, "description": description}

    accepts = "Only items with an `accepts` entry whose {} is this (all such filters: one entry)."
    return {
        "summary": "The upstreams' Bazaar catalogues merged (newest lastUpdated wins per "
        "resource, accepts merged), filtered and paginated; served from cache.",
        "parameters": [
            query("type", _TEXT, "Only items of this type (http, mcp)."),
            query("payTo", _TEXT, accepts.format("payTo (EVM: any case)")),
            query("scheme", _TEXT, accepts.format("scheme")),
            query("network", _TEXT, accepts.format("network")),
            query("extensions", _TEXT, "Only items carrying these extension keys (comma list)."),
            query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, ""),
            query("offset", {"type": "integer", "minimum": 0, "default": 0}, ""),
        ],
        "responses": {
            "200": _json(_ref("DiscoveryResources"), "One page (empty if no upstream has one)."),
            "400": _json(_ref("Error"), "Bad limit or offset."),
            "404": _json(_ref("Error"), "Discovery is off (discovery.enabled: false)."),
        },
    }


def _schemas() -> dict[str, Any]:
    upstream_status_keys = [
        "name", "url", "priority", "weight", "state", "reason", "probe", "breaker", "networks",
        "kinds", "signers", "extensions", "requests", "failures", "last_error", "last_error_at",
        "latency_ewma_ms", "recent", "traffic_share",
    ]  # fmt: skip
    percentiles = {
        "type": "object",
        "required": ["count", "p50", "p95", "p99"],
        "properties": {
            "count": {"type": "integer"},
            **{p: {"type": ["number", "null"]} for p in ("p50", "p95", "p99")},
        },
    }
    return {
        "PaymentRequest": {
            "type": "object",
            "required": ["paymentPayload", "paymentRequirements"],
            "properties": {
                "x402Version": {"type": "integer", "enum": [1, 2]},
                "paymentPayload": {"type": "object"},
                "paymentRequirements": {"type": "object"},
            },
        },
        "VerifyResponse": {
            "type": "object",
            "required": ["isValid"],
            "properties": {
                "isValid": {"type": "boolean"},
                "invalidReason": _TEXT,
                "invalidMessage": _TEXT,
                "payer": _TEXT,
            },
        },
        "SettleResponse": {
            "type": "object",
            "required": ["success", "transaction", "network"],
            "properties": {
                "success": {"type": "boolean"},
                "transaction": _TEXT,
                "network": _TEXT,
                "errorReason": _TEXT,
                "errorMessage": _TEXT,
                "payer": _TEXT,
            },
        },
        "UpstreamFailures": {
            "type": "object",
            "required": ["upstreams"],
            "properties": {
                "isValid": {"type": "boolean"},
                "success": {"type": "boolean"},
                "invalidReason": _TEXT,
                "errorReason": _TEXT,
                "upstreams": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "error"],
                        "properties": {"name": _TEXT, "error": _NULLABLE_TEXT},
                    },
                },
            },
        },
        "SupportedResponse": {
            "type": "object",
            "required": ["kinds", "extensions", "signers"],
            "properties": {
                "kinds": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["x402Version", "scheme", "network"],
                        "properties": {
                            "x402Version": {"type": "integer"},
                            "scheme": _TEXT,
                            "network": _TEXT,
                            "extra": {"type": "object"},
                        },
                    },
                },
                "extensions": {"type": "array", "items": _TEXT},
                "signers": {"type": "object", "additionalProperties": {"type": "array"}},
            },
        },
        "UpstreamStatus": {
            "type": "object",
            "required": upstream_status_keys,
            "properties": {
                "state": {"enum": list(STATES)},
                "recent": {
                    "type": "object",
                    "required": ["requests", "success_rate", "success_rate_lower_bound"],
                    "properties": {
                        "latency_ms": {
                            "type": "object",
                            "properties": {"verify": percentiles, "settle": percentiles},
                        }
                    },
                },
            },
        },
        "Status": {
            "type": "object",
            "required": [
                "version",
                "generated_at",
                "upstreams",
                "totals",
                "recent_settlements",
                "ledger",
            ],
            "properties": {
                "upstreams": {"type": "array", "items": _ref("UpstreamStatus")},
                "ledger": {
                    "type": "object",
                    "required": ["backend", "location", "unresolved"],
                    "properties": {
                        "backend": {"enum": ["sqlite", "postgresql"]},
                        "location": _TEXT,
                        "unresolved": {"type": "integer"},
                    },
                },
                "recent_settlements": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["at", "upstream", "network", "result", "transaction"],
                    },
                },
            },
        },
        "Timeline": {
            "type": "object",
            "required": ["window_s", "bucket_s", "upstreams"],
            "properties": {"upstreams": {"type": "object"}},
        },
        "Health": {"type": "object", "required": ["status"]},
        "DiscoveryItem": {
            "type": "object",
            "required": ["resource", "type", "x402Version", "accepts"],
            "properties": {
                "resource": _TEXT,
                "type": _TEXT,
                "x402Version": {"type": "integer"},
                "accepts": {"type": "array", "items": {"type": "object"}},
                "lastUpdated": {"type": ["string", "number"]},
                "metadata": {"type": "object"},
                "extensions": {"type": "object"},
            },
        },
        "DiscoveryResources": {
            "type": "object",
            "required": ["x402Version", "items", "pagination"],
            "properties": {
                "x402Version": {"const": 2},
                "items": {"type": "array", "items": _ref("DiscoveryItem")},
                "pagination": {
                    "type": "object",
                    "required": ["limit", "offset", "total"],
                    "properties": {
                        k: {"type": "integer", "minimum": 0} for k in ("limit", "offset", "total")
                    },
                },
            },
        },
        "AdminResult": {"type": "object", "required": ["name", "state", "reason"]},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": _TEXT}},
        "SettlementAttempt": {
            "type": "object",
            "required": ["n", "kind", "upstream", "sent_at", "finished_at", "outcome"],
            "properties": {
                "n": {"type": "integer"},
                "kind": {"enum": ["settle", "chain"]},
                "upstream": _NULLABLE_TEXT,
                "sent_at": {"type": "number"},
                "finished_at": {"type": ["number", "null"]},
                "outcome": _NULLABLE_TEXT,
                "http_status": {"type": ["integer", "null"]},
                "transaction": _NULLABLE_TEXT,
                "response": {"type": ["object", "null"]},
                "error": _NULLABLE_TEXT,
            },
        },
        "Settlement": {
            "type": "object",
            "required": ["id", "state", "network", "transaction", "attempts", "reported"],
            "properties": {
                "id": _TEXT,
                "state": {"enum": list(LEDGER_STATES)},
                "network": _TEXT,
                "scheme": _TEXT,
                "x402_version": {"type": "integer"},
                "asset": _NULLABLE_TEXT,
                "payer": _NULLABLE_TEXT,
                "nonce": _NULLABLE_TEXT,
                "valid_before": {"type": ["integer", "null"]},
                "upstream": _NULLABLE_TEXT,
                "transaction": _NULLABLE_TEXT,
                "reported": {"type": "boolean"},
                "note": _NULLABLE_TEXT,
                "response": {"type": ["object", "null"]},
                "attempts": {"type": "array", "items": _ref("SettlementAttempt")},
            },
        },
        "SettlementList": {
            "type": "object",
            "required": ["settlements"],
            "properties": {"settlements": {"type": "array", "items": _ref("Settlement")}},
        },
    }


def spec() -> JSONObject:
    """The OpenAPI document of every route the server has."""
    admin = {
        "summary": "",
        "security": [{"admin": []}],
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": _TEXT}],
        "responses": {
            "200": _json(_ref("AdminResult"), "The upstream's new state."),
            "401": _json(_ref("Error"), "Missing or wrong admin token."),
            "404": _json(_ref("Error"), "No such upstream, or the admin API is off."),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "x402-aggregator",
            "version": __version__,
            "description": "An x402 facilitator in front of many: the facilitator API "
            "(x402 v1 and v2) plus status, metrics and admin endpoints.",
        },
        "paths": {
            "/verify": {
                "post": _payment_operation(
                    "Verify a payment.", "VerifyResponse", "UpstreamFailures"
                )
            },
            "/settle": {
                "post": _payment_operation(
                    "Settle a payment.", "SettleResponse", "UpstreamFailures"
                )
            },
            "/supported": {
                "get": {
                    "summary": "Kinds every upstream supports, merged; served from cache.",
                    "security": _API_KEY_SECURITY,
                    "responses": {
                        "200": _json(_ref("SupportedResponse"), "Merged kinds."),
                        **_refusals("Error"),
                    },
                }
            },
            "/discovery/resources": {"get": _discovery_operation()},
            "/status": {
                "get": {
                    "summary": "Per-upstream state, counters and latency.",
                    "responses": {"200": _json(_ref("Status"), "Status.")},
                }
            },
            "/api/facilitator-status": {
                "get": {
                    "summary": "Alias of /status.",
                    "responses": {"200": _json(_ref("Status"), "Status.")},
                }
            },
            "/status/timeline": {
                "get": {
                    "summary": "Calls and latency per upstream in time buckets.",
                    "parameters": [
                        {"name": "window_s", "in": "query", "schema": {"type": "number"}},
                        {"name": "bucket_s", "in": "query", "schema": {"type": "number"}},
                        {
                            "name": "operation",
                            "in": "query",
                            "schema": {"enum": ["verify", "settle"]},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("Timeline"), "Timeline."),
                        "400": _json(_ref("Error"), "Bad parameters."),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness.",
                    "responses": {"200": _json(_ref("Health"), "Alive.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics.",
                    "responses": {"200": {"description": "Prometheus text format."}},
                }
            },
            "/": {
                "get": {
                    "summary": "The live dashboard (one self-contained page).",
                    "responses": {"200": {"description": "HTML."}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": {"200": {"description": "OpenAPI 3.1."}},
                }
            },
            "/settlements": {
                "get": {
                    "summary": "Settlement records from the ledger, newest first.",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"enum": list(LEDGER_STATES)}},
                        {"name": "transaction", "in": "query", "schema": _TEXT},
                        {"name": "payer", "in": "query", "schema": _TEXT},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("SettlementList"), "Records (without attempts)."),
                        "400": _json(_ref("Error"), "Bad parameters."),
                        "503": _json(_ref("Error"), "The ledger is unavailable."),
                    },
                }
            },
            "/settlements/{id}": {
                "get": {
                    "summary": "One payment's settlement: state, transaction, every attempt.",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": _TEXT,
                            "description": "The payment's id (the X402-Settlement-Id header of "
                            "its settle), URL-encoded.",
                        }
                    ],
                    "responses": {
                        "200": _json(_ref("Settlement"), "The record."),
                        "404": _json(_ref("Error"), "No such record (or it expired)."),
                        "503": _json(_ref("Error"), "The ledger is unavailable."),
                    },
                }
            },
            "/admin/upstreams/{name}/drain": {
                "post": {**admin, "summary": "Take an upstream out of rotation."}
            },
            "/admin/upstreams/{name}/enable": {"post": {**admin, "summary": "Put it back."}},
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer"},
                "apiKeyBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A caller's API key (server.api_keys_env).",
                },
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
