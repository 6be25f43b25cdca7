"""Added latency: one open-loop verify load, direct to a fake upstream and through the aggregator.

A fake facilitator with a fixed small latency and the aggregator (``x402-aggregator serve``) run
pinned to one core; the load generator (:mod:`bench.loadgen`) runs pinned to the other. At each
rate the two paths take turns in 1 s blocks, so both see the same machine. Latency is measured
from each request's scheduled send time; "added" is through minus direct, quantile by quantile.
The aggregator's RSS is sampled throughout (:mod:`bench.memory`).

    python -m bench.overhead [--quick]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .loadgen import LoadResult, Target
from .loadrun import run_load, verify_load
from .memory import MemoryResult, RssSampler, rss_mib
from .services import HOST, LOAD_CPU, SUT_CPU, start_aggregator, start_fake
from .settings import Settings
from .stats import Summary, percentile
from .workspace import run_section

#: A generator whose CPU, rate or dispatch lag crosses these is called saturated.
MAX_GENERATOR_CPU = 0.8
MIN_RATE_SHARE = 0.98
MAX_DISPATCH_LAG_P99_US = 1000.0


@dataclass(frozen=True, slots=True)
class GeneratorStats:
    target_rate: float
    achieved_rate: float
    cpu: float  #: process CPU time / wall time over the schedule
    lag_p50_us: float
    lag_p99_us: float
    sent: int
    scheduling: str

    @property
    def saturated(self) -> bool:
        """Out of CPU or behind schedule: then the measurement says little about the server."""
        return (
            self.cpu > MAX_GENERATOR_CPU or self.achieved_rate < MIN_RATE_SHARE * self.target_rate
        )

    @property
    def late_wakeups(self) -> bool:
        """Not saturated, but the timer's wake-ups were often late (a busy or noisy core)."""
        return self.lag_p99_us > MAX_DISPATCH_LAG_P99_US

    @property
    def verdict(self) -> str:
        if self.saturated:
            return "**saturated**"
        if self.late_wakeups:
            return "not saturated; **late wake-ups** (p99 lag > 1 ms)"
        return "not saturated"

    @classmethod
    def of(cls, result: LoadResult) -> GeneratorStats:
        return cls(
            result.rate,
            result.achieved_rate,
            result.cpu_utilisation,
            percentile(result.lag_us, 50),
            percentile(result.lag_us, 99),
            result.sent,
            result.scheduling,
        )


@dataclass(slots=True)
class RateResult:
    rate: int
    seconds_per_path: float
    direct: Summary
    through: Summary
    direct_errors: int
    through_errors: int
    generator: GeneratorStats
    #: Sorted latencies per path, for the percentile plot.
    direct_sorted: list[float] = field(repr=False, default_factory=list)
    through_sorted: list[float] = field(repr=False, default_factory=list)

    @property
    def added(self) -> Summary:
        return self.through.minus(self.direct)


@dataclass(slots=True)
class OverheadResult:
    upstream_latency_ms: float
    block_s: float
    rates: list[RateResult]
    memory: MemoryResult

    def at(self, rate: int) -> RateResult | None:
        return next((r for r in self.rates if r.rate == rate), None)


def _errors(result: LoadResult, indices: list[int]) -> int:
    return sum(not result.ok(i) for i in indices)


def run(settings: Settings, workdir: Path) -> OverheadResult:
    lifetime = 2 * settings.overhead_seconds_per_path * len(settings.overhead_rates) + 120
    fake = start_fake(
        "upstream",
        workdir,
        latency_ms=settings.upstream_latency_ms,
        cpu=SUT_CPU,
        lifetime_s=lifetime,
    )
    try:
        agg = start_aggregator(
            "aggregator",
            workdir,
            [{"name": "upstream", "url": fake.url}],
            cpu=SUT_CPU,
            lifetime_s=lifetime,
        )
    except BaseException:
        fake.stop()
        raise
    processes = agg.processes()
    sampler = RssSampler(processes)
    try:
        time.sleep(settings.pause_s)  # start-up probes done, allocator settled
        idle = rss_mib(processes)
        sampler.start()
        rates = []
        for rate in settings.overhead_rates:
            sampler.phase(f"{rate} req/s")
            spec = verify_load(
                targets=[Target(HOST, fake.port), Target(HOST, agg.port)],
                rate=rate,
                duration_s=2 * settings.overhead_seconds_per_path,
                block_s=settings.overhead_block_s,
                cpu=LOAD_CPU,
            )
            result = run_load(spec, workdir, f"overhead-{rate}")
            rates.append(_summarise(rate, settings.overhead_seconds_per_path, result))
        sampler.phase("after load")
        time.sleep(settings.pause_s)
        after = rss_mib(processes)
    finally:
        sampler.stop()
        agg.stop()
        fake.stop()
    heaviest = f"{max(settings.overhead_rates)} req/s"
    memory = MemoryResult(
        idle, sampler.peak(heaviest), heaviest, after, settings.pause_s, sampler.samples
    )
    return OverheadResult(settings.upstream_latency_ms, settings.overhead_block_s, rates, memory)


def _summarise(rate: int, seconds: float, result: LoadResult) -> RateResult:
    direct, through = result.indices(0), result.indices(1)
    d = sorted(result.latency_ms[i] for i in direct)
    t = sorted(result.latency_ms[i] for i in through)
    return RateResult(
        rate=rate,
        seconds_per_path=seconds,
        direct=Summary.of(d),
        through=Summary.of(t),
        direct_errors=_errors(result, direct),
        through_errors=_errors(result, through),
        generator=GeneratorStats.of(result),
        direct_sorted=d,
        through_sorted=t,
    )


def main() -> None:
    from .report import memory_section, overhead_section

    result = run_section(__doc__, run)
    print(overhead_section(result))
    print(memory_section(result.memory))
    if any(math.isnan(r.through.p50) for r in result.rates):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
