"""Type aliases shared across modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

#: A decoded JSON object as it travels on the wire; kept as a dict so unknown keys survive.
JSONObject = dict[str, Any]

#: The two calls that carry a payment.
Operation = Literal["verify", "settle"]

#: Seconds from some fixed point: ``time.monotonic`` for intervals, ``time.time`` where a value
#: is compared with wall-clock timestamps (token expiry, ``validBefore``). Injected for tests.
Clock = Callable[[], float]
