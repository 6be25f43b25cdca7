"""The engine in-process, as a facilitator client for the official ``x402`` Python SDK.

``x402ResourceServer(AggregatorClient.from_config("aggregator.yaml"))`` gives a resource server
failover, health and routing with no extra service to run. ``AggregatorClient`` satisfies the
SDK's ``FacilitatorClient`` protocol (async ``verify``/``settle``, plain ``def get_supported``);
``AggregatorClientSync`` its ``FacilitatorClientSync`` twin, for Flask.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import orjson
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from .aggregator import Aggregator
from .config import Config, load_config
from .transport import Transport

Payload = PaymentPayload | PaymentPayloadV1
Requirements = PaymentRequirements | PaymentRequirementsV1
T = TypeVar("T")


def _body(payload: Payload, requirements: Requirements) -> bytes:
    # The same JSON the SDK's HTTP client would send to a remote facilitator.
    return orjson.dumps(
        {
            "x402Version": payload.x402_version,
            "paymentPayload": payload.model_dump(by_alias=True, exclude_none=True),
            "paymentRequirements": requirements.model_dump(by_alias=True, exclude_none=True),
        }
    )


class AggregatorClient:
    """An async x402 facilitator client that routes to many facilitators in-process."""

    def __init__(self, config: Config, *, transport: Transport | None = None) -> None:
        self.engine = Aggregator(config, transport=transport)
        self._started = False
        self._probed = False
        self._lock: asyncio.Lock | None = None

    @classmethod
    def from_config(
        cls, source: str | Path | dict[str, Any] | Config | None = None
    ) -> AggregatorClient:
        """Build from the same YAML file (or mapping) the service uses."""
        return cls(source if isinstance(source, Config) else load_config(source))

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        await self._ensure_started()
        reply = await self.engine.verify(_body(payload, requirements))
        return VerifyResponse.model_validate(reply.json())

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse:
        await self._ensure_started()
        reply = await self.engine.settle(_body(payload, requirements))
        return SettleResponse.model_validate(reply.json())

    def get_supported(self) -> SupportedResponse:
        """What the upstreams support, merged. Synchronous, as the SDK calls it at start-up.

        Before the background probes run, the first call probes every upstream once,
        blocking for at most ``health.timeout_s`` (the SDK's own HTTP client blocks here too).
        """
        if not self._probed and not self._started:
            _in_thread(self.engine.probe_once())
            self._probed = True
        return SupportedResponse.model_validate(orjson.loads(self.engine.supported()))

    async def start(self) -> None:
        """Start background probing; verify/settle do it on first use if you don't."""
        await self._ensure_started()

    async def aclose(self) -> None:
        if self._started:
            await self.engine.aclose()
            self._started = False

    async def __aenter__(self) -> AggregatorClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._started:
                await self.engine.start()
                self._started = True


class AggregatorClientSync:
    """The same client for synchronous resource servers (Flask): an event loop in a thread."""

    def __init__(self, config: Config, *, transport: Transport | None = None) -> None:
        self._client = AggregatorClient(config, transport=transport)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="x402-aggregator")
        self._thread.daemon = True
        self._thread.start()
        routing = config.routing
        # Callers wait a little longer than the engine's own deadlines, never forever.
        self._timeout_s = max(routing.verify_deadline_s, routing.settle_deadline_s) + 10

    @classmethod
    def from_config(
        cls, source: str | Path | dict[str, Any] | Config | None = None
    ) -> AggregatorClientSync:
        return cls(source if isinstance(source, Config) else load_config(source))

    def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        return self._run(self._client.verify(payload, requirements))

    def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse:
        return self._run(self._client.settle(payload, requirements))

    def get_supported(self) -> SupportedResponse:
        return self._client.get_supported()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> AggregatorClientSync:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=self._timeout_s)


def _in_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion on a fresh loop in another thread, even from inside a loop."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="x402-aggregator-probe")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
