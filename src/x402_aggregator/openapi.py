"""The HTTP API as an OpenAPI 3.1 document, served at ``/openapi.json`` and checked by a test.

The document is package data (``openapi.json`` beside this module, like ``dashboard.html``). What
code owns stays computed: the file holds a placeholder string, such as
``"<x402_aggregator.ledger.STATES>"``, where the package version or a tuple of states goes, so a
release or a new state needs no edit to the file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ._types import JSONObject
from ._version import __version__
from .ledger import STATES as LEDGER_STATES
from .metrics import STATES

#: The packaged document, with placeholders where computed values go.
DOCUMENT = Path(__file__).parent / "openapi.json"

#: How every placeholder string in the document starts; any other string is literal text.
PLACEHOLDER_PREFIX = "<x402_aggregator."


def computed_values() -> dict[str, Any]:
    """Return each placeholder of the document with the value code gives it."""
    return {
        "<x402_aggregator.__version__>": __version__,
        "<x402_aggregator.ledger.STATES>": list(LEDGER_STATES),
        "<x402_aggregator.metrics.STATES>": list(STATES),
    }


def _fill(node: Any, values: Mapping[str, Any]) -> Any:
    """Return a copy of ``node`` with every placeholder string replaced by its value."""
    if isinstance(node, dict):
        return {key: _fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(item, values) for item in node]
    if isinstance(node, str) and node.startswith(PLACEHOLDER_PREFIX):
        if node not in values:
            raise ValueError(
                f"{DOCUMENT.name} has the placeholder {node!r}, which openapi.computed_values "
                f"does not fill (it fills {sorted(values)})"
            )
        # A copy per place, so that no two parts of the document share one list.
        return copy.deepcopy(values[node])
    return node


def spec() -> JSONObject:
    """Return the OpenAPI document of every route the server has, computed parts filled in."""
    document: JSONObject = _fill(orjson.loads(DOCUMENT.read_bytes()), computed_values())
    return document
