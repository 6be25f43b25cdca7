"""Type aliases shared across modules."""

from __future__ import annotations

from typing import Any, Literal

#: A decoded JSON object as it travels on the wire; kept as a dict so unknown keys survive.
JSONObject = dict[str, Any]

#: The two calls that carry a payment.
Operation = Literal["verify", "settle"]
