"""How long and how hard each section runs: the full suite (about 4-5 minutes) or ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    quick: bool = False

    # --- overhead (open loop, direct vs through, interleaved in 1 s blocks) -----------------
    @property
    def overhead_rates(self) -> tuple[int, ...]:
        return (500, 1000) if self.quick else (100, 500, 1000)

    @property
    def overhead_seconds_per_path(self) -> float:
        """Seconds of load each path gets at each rate."""
        return 1.0 if self.quick else 10.0

    @property
    def overhead_block_s(self) -> float:
        """Length of one turn of a path."""
        return 0.5 if self.quick else 1.0

    #: Latency of the fake upstream.
    upstream_latency_ms: float = 1.0

    # --- profile --------------------------------------------------------------------------
    @property
    def profile_seconds(self) -> int:
        return 1 if self.quick else 5

    profile_rate: int = 1000
    profile_sampling_hz: int = 250

    # --- throughput (wrk) -----------------------------------------------------------------
    @property
    def wrk_seconds(self) -> int:
        return 1 if self.quick else 10

    @property
    def wrk_warmup_seconds(self) -> int:
        return 0 if self.quick else 1

    wrk_threads: int = 1
    wrk_connections: int = 32

    # --- faults ---------------------------------------------------------------------------
    @property
    def fault_modes(self) -> tuple[str, ...]:
        return ("hang",) if self.quick else ("hang", "http500", "stop")

    @property
    def fault_timeline(self) -> tuple[float, float, float]:
        """(fault starts, primary recovers, load ends), seconds after the first request."""
        return (1.0, 2.7, 3.7) if self.quick else (3.0, 7.0, 12.0)

    @property
    def primary_timeout_s(self) -> float:
        """The primary's verify timeout (``upstreams[].timeout_s``)."""
        return 1.0 if self.quick else 2.0

    fault_rate: int = 100
    health_interval_s: float = 1.0

    # --- settle (test bed) ----------------------------------------------------------------
    @property
    def settle_calls(self) -> int:
        return 3 if self.quick else 20

    @property
    def settle_warmup(self) -> int:
        """Verify + settle pairs per path before measuring (connections, caches)."""
        return 1 if self.quick else 2

    # --- ledger (settles through the settlement ledger) ------------------------------------
    @property
    def ledger_rounds(self) -> int:
        """Sequential settles measured per path (the paths take turns)."""
        return 100 if self.quick else 500

    @property
    def ledger_warmup_rounds(self) -> int:
        return 10 if self.quick else 30

    @property
    def ledger_seconds(self) -> float:
        """Measured seconds of closed-loop concurrent settles per path."""
        return 2.0 if self.quick else 5.0

    @property
    def ledger_warmup_s(self) -> float:
        return 0.5 if self.quick else 1.0

    #: Concurrent clients (connections, one settle in flight each).
    ledger_clients: int = 32

    @property
    def fsync_probes(self) -> int:
        return 50 if self.quick else 200

    @property
    def pause_s(self) -> float:
        """Pause before reading RSS at idle and after load."""
        return 0.3 if self.quick else 1.0
