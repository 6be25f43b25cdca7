"""A minimal HTTP/1.1 keep-alive client for the load generator: callbacks, no tasks per request.

A general-purpose client (aiohttp, httpx) costs 100+ microseconds of Python per request and adds
its own queueing; this one writes prebuilt request bytes and parses ``Content-Length`` answers,
so the generator stays far from saturation and its timestamps stay close to the wire. It only
speaks what our servers answer (no chunked bodies, no pipelining: one request per connection at
a time).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response: status, lower-cased header block, and whether the body said yes."""

    status: int
    head: bytes
    valid: bool

    def header(self, name: bytes) -> str:
        """The value of a lower-cased header name, or ''."""
        at = self.head.find(b"\r\n" + name + b":")
        if at < 0:
            return ""
        start = at + len(name) + 3
        end = self.head.find(b"\r\n", start)
        return self.head[start : end if end >= 0 else len(self.head)].strip().decode()


_YES = (b'"isValid":true', b'"isValid": true', b'"success":true', b'"success": true')


def _is_valid(body: bytes) -> bool:
    """A yes from a facilitator: ``isValid`` (verify) or ``success`` (settle) true."""
    return any(yes in body for yes in _YES)


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``pool`` is told about answers and losses."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        #: Index of the request in flight on this connection, or -1.
        self.current = -1
        self.sent_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(_END)
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:  # chunked or close-delimited: not something our servers send
            self.pool.lost(self, "no content-length")
            self.abort()
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(buffer) < total:
            return
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        try:
            status = int(head[9:12])
        except ValueError:
            status = 0
        close = b"\r\nconnection: close" in head
        self.pool.answered(self, Answer(status, head, _is_valid(body)), close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.lost(self, "connection lost" if exc is None else f"connection lost: {exc}")

    def send(self, index: int, payload: bytes, now_ns: int) -> None:
        assert self.transport is not None
        self.current = index
        self.sent_ns = now_ns
        self.transport.write(payload)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


#: (request index, sent at ns, answer or None, error text)
Done = Callable[[int, int, Answer | None, str], None]


class Pool:
    """Connections to one host:port; requests beyond ``max_connections`` in flight wait."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        *,
        payload: Callable[[int], bytes],
        done: Done,
        clock: Callable[[], int],
        max_connections: int,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.payload = payload
        self.done = done
        self.clock = clock
        self.max_connections = max_connections
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.opening = 0
        self.waiting: deque[int] = deque()
        self.connect_errors = 0
        #: Connections opened during the measurement (all busy when a request was due).
        self.opened = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.opening

    async def prewarm(self, count: int) -> None:
        """Open ``count`` connections ahead of the measurement."""
        for _ in range(count - self.size):
            _, conn = await self.loop.create_connection(
                lambda: Connection(self), self.host, self.port
            )
            self.idle.append(conn)

    def submit(self, index: int) -> None:
        if self.idle:
            self._send(self.idle.pop(), index)
        elif self.size < self.max_connections:
            self._open(index)
        else:
            self.waiting.append(index)

    def _send(self, conn: Connection, index: int) -> None:
        self.busy.add(conn)
        conn.send(index, self.payload(index), self.clock())

    def _open(self, index: int) -> None:
        self.opening += 1
        self.opened += 1
        task = self.loop.create_task(self._connect_and_send(index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_and_send(self, index: int) -> None:
        try:
            _, conn = await self.loop.create_connection(
                lambda: Connection(self), self.host, self.port
            )
        except OSError as exc:
            self.opening -= 1
            self.connect_errors += 1
            self.done(index, self.clock(), None, f"connect: {exc}")
            return
        self.opening -= 1
        self._send(conn, index)

    def answered(self, conn: Connection, answer: Answer, close: bool) -> None:
        index, sent = conn.current, conn.sent_ns
        conn.current = -1
        self.busy.discard(conn)
        if index >= 0:
            self.done(index, sent, answer, "")
        if close:
            conn.abort()
        else:
            self.idle.append(conn)
        self._next()

    def lost(self, conn: Connection, error: str) -> None:
        index = conn.current
        conn.current = -1
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if index >= 0:
            self.done(index, conn.sent_ns, None, error)
        self._next()

    def _next(self) -> None:
        while self.waiting and (self.idle or self.size < self.max_connections):
            self.submit(self.waiting.popleft())

    def expire(self, now_ns: int, timeout_ns: int) -> None:
        """Give up on requests in flight for longer than ``timeout_ns`` (their connection goes)."""
        for conn in list(self.busy):
            if conn.current >= 0 and now_ns - conn.sent_ns > timeout_ns:
                index = conn.current
                conn.current = -1
                self.busy.discard(conn)
                self.done(index, conn.sent_ns, None, "timeout")
                conn.abort()

    def in_flight(self) -> int:
        return len(self.busy) + self.opening + len(self.waiting)

    def close(self) -> None:
        for conn in [*self.idle, *self.busy]:
            conn.abort()
        self.idle.clear()
        self.busy.clear()
