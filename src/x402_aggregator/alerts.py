"""Alerts: a JSON event to a webhook when an upstream changes state or a settle is ambiguous.

Delivery never slows a request: events go into a bounded queue (the oldest is dropped when it
is full) and one background task posts them, each with a timeout. The webhook URL may carry a
token (Slack-style), so it is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import orjson

from ._types import JSONObject
from .errors import TransportError
from .transport import AiohttpTransport, Transport, UpstreamRequest

logger = logging.getLogger("x402_aggregator.alerts")


class Alerts:
    """Posts events to ``url``; with no URL, events are only logged."""

    def __init__(
        self,
        url: str | None,
        *,
        timeout_s: float = 5.0,
        queue_size: int = 100,
        transport: Transport | None = None,
    ) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._queue: deque[JSONObject] = deque(maxlen=queue_size)
        self._wake = asyncio.Event()
        self._transport = transport
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    def emit(self, event: str, **fields: Any) -> None:
        """Queue an event; never blocks, never raises."""
        if self._url is None:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append({"event": event, "at": time.time(), **fields})
        self._wake.set()

    async def start(self) -> None:
        if self._url is not None:
            self._transport = self._transport or AiohttpTransport(pool_size=4)
            self._task = asyncio.create_task(self._run(), name="alerts")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._transport is not None:
            await self._transport.aclose()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._deliver(self._queue.popleft())

    async def _deliver(self, event: JSONObject) -> None:
        assert self._url is not None
        assert self._transport is not None
        request = UpstreamRequest(
            method="POST",
            url=self._url,
            headers={"Content-Type": "application/json", "User-Agent": "x402-aggregator"},
            body=orjson.dumps(event),
            timeout_s=self._timeout_s,
            connect_timeout_s=min(self._timeout_s, 3.0),
        )
        try:
            response = await self._transport.send(request)
        except TransportError as exc:
            self.failed += 1
            logger.warning("alert %s not delivered: %s", event["event"], type(exc).__name__)
            return
        if response.status >= 300:
            self.failed += 1
            logger.warning(
                "alert %s refused by the webhook: HTTP %d", event["event"], response.status
            )
        else:
            self.sent += 1
