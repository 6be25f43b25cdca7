"""Whether the instance that owns a claim is still alive: heartbeats, and on one host, its pid.

A pending claim whose owner is gone must be taken over, and one whose owner lives must not be:
this is the only place that decides which, so claiming and the resolver's due list agree.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import LedgerError
from .base import Database

logger = logging.getLogger("x402_aggregator.ledger")


class Instances:
    """This instance's heartbeat in the ``instances`` table, and whether a claim's owner is gone."""

    def __init__(self, db: Database, *, instance_timeout_s: float) -> None:
        self.db = db
        self.instance_timeout_s = instance_timeout_s
        self.instance = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        #: Boot and pid namespace: pids can only be compared between processes that share both.
        self._namespace = _pid_namespace()
        self.process_start = f"{self._namespace}{_process_start(self.pid)}"
        #: Settlements this instance is working on right now, with how many tasks (see
        #: :meth:`working`).
        self.busy: Counter[str] = Counter()
        self.started_at = time.time()
        self.heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Announce this instance every ``instance_timeout_s / 4``, until :meth:`stop`."""
        if self.heartbeat is None:  # opened again after a failure: one is enough
            self.heartbeat = asyncio.create_task(self._beat_forever(), name="ledger heartbeat")

    async def stop(self) -> None:
        """Stop the heartbeat, if it runs."""
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            await asyncio.gather(self.heartbeat, return_exceptions=True)
            self.heartbeat = None

    async def beat(self) -> None:
        """Announce this instance now (insert its row, or refresh its ``heartbeat_at``)."""
        now = time.time()
        await self.db.execute(
            "INSERT INTO instances (id, host, pid, process_start, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            self.instance,
            self.host,
            self.pid,
            self.process_start,
            self.started_at,
            now,
        )

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.instance_timeout_s / 4)
            try:
                await self.beat()
            except LedgerError as exc:
                logger.error("ledger heartbeat failed: %s", exc)

    async def orphaned(self, owner: str | None, settlement_id: str | None = None) -> bool:
        """True when ``owner`` is gone: its heartbeat stopped, or its process is dead.

        This instance's own claim is orphaned when nothing else here works on it (a settle
        that ended in an error left it pending): ``busy`` counts the tasks working on each
        settlement, the asking one included.
        """
        if owner is None:
            return True
        if owner == self.instance:
            # Whoever asks holds ``working`` for it: anyone else here means it is in hand.
            return settlement_id is not None and self.busy[settlement_id] <= 1
        rows = await self.db.fetch(
            "SELECT host, pid, process_start, heartbeat_at FROM instances WHERE id = ?", owner
        )
        if not rows:
            return True
        row = rows[0]
        if time.time() - float(row["heartbeat_at"]) > self.instance_timeout_s:
            return True
        started = str(row["process_start"] or "")
        if row["host"] == self.host and started.startswith(self._namespace):
            # Same host, same boot, same pid namespace: a dead owner is known at once (kill -9,
            # a restarted process that reuses the pid), without waiting for its heartbeat.
            # Containers sharing a hostname have their own pid namespaces: heartbeat only.
            pid = int(row["pid"])
            return _process_start(pid) != started.removeprefix(self._namespace)
        return False

    @contextmanager
    def working(self, settlement_id: str) -> Iterator[None]:
        """Mark a settlement as worked on by this instance (its pending claim is not orphaned)."""
        self.busy[settlement_id] += 1
        try:
            yield
        finally:
            self.busy[settlement_id] -= 1
            if not self.busy[settlement_id]:
                del self.busy[settlement_id]


def _pid_namespace() -> str:
    """``<boot id>/<pid namespace inode>/``, or a random value where these cannot be read."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return f"{uuid.uuid4().hex}/"  # never equal to another process's: heartbeat only
    return f"{boot}/{namespace}/"


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (pid + start tick on Linux): tells a reused pid apart.

    None if there is no such process. Elsewhere, just whether the pid is alive.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # Field 22 (starttime) comes after the command name, which may contain spaces.
            fields = stat.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None  # exited, not yet reaped by its parent
        return f"{pid}:{int(fields[19])}"
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"{pid}:alive"
