"""Resident memory of the aggregator: idle after start-up, peak under load, and over time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil  # type: ignore[import-untyped]

MIB = 1024 * 1024


def rss_mib(processes: list[psutil.Process]) -> float:
    """Summed RSS of ``processes`` (a service's process tree) in MiB."""
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / MIB


@dataclass(slots=True)
class MemoryResult:
    idle_mib: float
    peak_mib: float  #: highest sample during the heaviest (last) load phase
    peak_phase: str
    after_mib: float
    pause_s: float  #: idle and after are read this long after start-up / the load
    #: (seconds since sampling began, MiB, phase) for the plot.
    series: list[tuple[float, float, str]] = field(default_factory=list)


class RssSampler:
    """Samples RSS in a background thread every ``every_s`` until ``stop`` (bounded by max_s).

    The processes are resolved once: finding a process's children walks all of ``/proc``, which
    costs milliseconds of CPU, enough to delay the load generator's timer when the kernel puts
    this thread on the generator's core.
    """

    def __init__(
        self,
        processes: list[psutil.Process],
        *,
        every_s: float = 0.1,
        max_s: float = 900.0,
    ) -> None:
        self._processes = processes
        self._every_s = every_s
        self._max_s = max_s
        self._stop = threading.Event()
        self._phase = "idle"
        self._start = time.monotonic()
        self.samples: list[tuple[float, float, str]] = []
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def phase(self, name: str) -> None:
        """Label the samples from now on (e.g. "1000 req/s")."""
        self._phase = name

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() - self._start < self._max_s:
            mib = rss_mib(self._processes)
            self.samples.append((time.monotonic() - self._start, mib, self._phase))
            self._stop.wait(self._every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peak(self, phase: str) -> float:
        values = [mib for _, mib, name in self.samples if name == phase]
        return max(values) if values else float("nan")
