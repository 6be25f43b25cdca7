"""Logging set-up: plain text for people, one JSON object per line for log pipelines.

Fields passed with ``extra={"fields": {...}}`` become JSON keys (or ``key=value`` pairs in text).
Request bodies, signatures and credentials are never logged.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]
#: The request being handled; tasks started for it (hedges) inherit it.
REQUEST_ID: ContextVar[str | None] = ContextVar("x402_aggregator_request_id", default=None)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


def configure(level: str, fmt: LogFormat) -> None:
    """Send the aggregator's (and uvicorn's) logs to stderr in ``fmt``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = [handler]
        uvicorn_logger.propagate = False


def request_id(supplied: str | None) -> str:
    """The caller's ``X-Request-Id`` if it is sane, else a new one.

    New ids are a random per-process prefix and a counter: unique without a ``getrandom``
    call per request (which was about 4 % of a verify's time under load).
    """
    if supplied and _REQUEST_ID.match(supplied):
        return supplied
    return f"{_id_prefix}{next(_id_counter):08x}"


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix = secrets.token_hex(4)
    _id_counter = itertools.count()


_id_prefix = ""
_id_counter = itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def short(address: str | None) -> str | None:
    """``0x1234…abcd``: enough to recognise an address in a log, no more."""
    if not address or len(address) < 12:
        return address
    return f"{address[:6]}…{address[-4:]}"
