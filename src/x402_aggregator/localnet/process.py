"""Child processes of the test bed: bounded lifetime, stopped by PID, never left behind.

Each child runs under coreutils ``timeout`` (it ends by itself after ``lifetime_s`` whatever
happens to us), in its own process group (``stop`` kills the whole group), and with a parent-death
signal (it ends when the process that started it dies, e.g. a crashed test run).

Linux sends the parent-death signal when the *thread* that forked the child exits, not the
process: so every child is forked by one spawner thread that lives as long as the process, and a
child started from a short-lived thread (a harness restarting a facilitator) survives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue

PR_SET_PDEATHSIG = 1
#: What the spawner thread is asked to do, and where it puts the started process.
_Job = tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]


class ProcessError(RuntimeError):
    """A child did not come up; the message carries the end of its log."""


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """The ``preexec_fn`` that asks for SIGTERM when our process (its spawner thread) dies."""

    def arm() -> None:  # pragma: no cover - runs in the child between fork and exec
        if sys.platform == "linux":
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # we died before the signal was armed: it never comes
            os._exit(1)

    return arm


class _Spawner:
    """One daemon thread that forks every child, so children live as long as the process."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        """Call ``start`` on the spawner thread and return what it returns (or raise its error)."""
        with self._lock:
            # Also after os.fork(): the child process has the object but not the thread.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="spawner", daemon=True)
                self._thread.start()
        done: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((start, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            start, done = self._jobs.get()
            try:
                done.set_result(start())
            except BaseException as exc:  # handed to the caller, who raises it
                done.set_exception(exc)


_SPAWNER = _Spawner()


class Child:
    """A started process with its log file; ``stop`` is idempotent."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 3.0) -> None:
        """Terminate the process group, then kill it if it lingers."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        else:
            self._signal(signal.SIGKILL)  # stragglers of a group whose leader already exited

    def kill(self) -> None:
        """Die at once, like a crash: no graceful shutdown."""
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=5)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    lifetime_s: float,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log_dir: Path | None = None,
) -> Child:
    """Start ``argv`` in the background, its output going to a log file."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="x402-testbed-"))
    log_path = log_dir / f"{name}.log"
    command = ["timeout", "--kill-after=5", f"{lifetime_s:g}", *argv]
    with log_path.open("wb") as log:
        process = _SPAWNER.run(
            lambda: subprocess.Popen(  # noqa: S603 - our own commands
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        )
    return Child(name, process, log_path)


def wait_until(child: Child, ready: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``ready`` until it holds; raise ``ProcessError`` if the child dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not child.alive():
            raise ProcessError(f"{child.name} exited early:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            child.stop()
            raise ProcessError(f"{child.name} not ready after {timeout_s:g} s:\n{child.log_tail()}")
        time.sleep(0.02)


def wait_for_line(child: Child, marker: str, timeout_s: float) -> str:
    """Wait for a log line containing ``marker`` and return it."""
    found: list[str] = []

    def seen() -> bool:
        for line in child.log_path.read_text(errors="replace").splitlines():
            if marker in line:
                found.append(line)
                return True
        return False

    wait_until(child, seen, timeout_s)
    return found[0]
