"""Faults under load: the primary hangs, answers 500 or is stopped; the backup stays healthy.

A steady open-loop verify load (100 req/s) runs through the aggregator; at ``fault`` seconds the
primary fake facilitator starts failing and at ``recover`` seconds it is healthy again (for
``stop``: started again on the same port). Each mode runs with hedging on (the default, adaptive
delay) and off. Health probes every second, primary verify timeout 2 s. We read which upstream
answered each request from ``X-Aggregator-Upstream`` and its attempts from
``X-Aggregator-Attempts``.

    python -m bench.faults [--quick]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from x402_aggregator.localnet.live import free_port

from .loadgen import LoadResult, Target
from .loadrun import LoadRun, verify_load
from .services import (
    HOST,
    LOAD_CPU,
    SUT_CPU,
    Service,
    set_behaviour,
    start_aggregator,
    start_fake,
    start_fakes,
)
from .settings import Settings
from .stats import Summary
from .workspace import run_section

MODES = {
    "hang": "primary verify hangs",
    "http500": "primary verify answers HTTP 500",
    "stop": "primary process stopped",
}
#: The adaptive hedge delay never goes below this (``routing.hedge_floor_ms`` default).
HEDGE_FLOOR_MS = 50.0


@dataclass(slots=True)
class Scenario:
    mode: str
    hedge: bool
    fault_s: float  #: when the fault began, seconds after the first scheduled request
    recover_s: float  #: when the primary was healthy again
    end_s: float
    requests: int
    errors: int  #: client-visible failures over the whole run
    fault_errors: int  #: ... among requests sent during the fault
    before: Summary  #: latency before the fault (ms)
    during: Summary  #: latency of requests sent during the fault (ms)
    first_backup_s: float | None  #: fault start -> first answer from the backup
    straight_to_backup_s: float | None  #: fault start -> first answer with 1 attempt at backup
    tried_primary: int  #: requests sent during the fault that still went to the primary first
    fault_requests: int
    #: recovery -> answer of the first request sent after it that the primary answered
    primary_back_s: float | None
    generator_cpu: float  #: the load generator's CPU time / wall time
    generator_rate: float  #: its achieved send rate
    #: (scheduled s, latency ms, who answered: primary/backup/error) for the plot.
    points: list[tuple[float, float, str]] = field(repr=False, default_factory=list)

    @property
    def p99_target_ms(self) -> float | None:
        """Hedge delay + backup latency, for a hang with hedging (else no target)."""
        if self.mode != "hang" or not self.hedge:
            return None
        return HEDGE_FLOOR_MS + self.before.p99

    @property
    def met(self) -> bool:
        target = self.p99_target_ms
        return self.errors == 0 and (target is None or self.during.p99 <= target)


@dataclass(slots=True)
class FaultsResult:
    rate: int
    primary_timeout_s: float
    health_interval_s: float
    scenarios: list[Scenario]


def _inject(mode: str, primary: Service) -> None:
    if mode == "stop":
        primary.stop()
    else:
        set_behaviour(primary, "verify", mode)


def _recover(mode: str, primary: Service, workdir: Path, port: int, lifetime: float) -> Service:
    if mode == "stop":
        return start_fake(f"{primary.name}-restarted", workdir, port=port, lifetime_s=lifetime)
    set_behaviour(primary, "verify", "ok")
    return primary


def _sleep_until(t0_ns: int, seconds: float) -> None:
    delay = (t0_ns + seconds * 1e9 - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _since(t0_ns: int) -> float:
    return (time.monotonic_ns() - t0_ns) / 1e9


def scenario(settings: Settings, workdir: Path, mode: str, hedge: bool) -> Scenario:
    fault_at, recover_at, end_at = settings.fault_timeline
    lifetime = end_at + 90
    port = free_port()
    tag = f"{mode}-{'hedge' if hedge else 'nohedge'}"
    services: list[Service] = []
    try:
        primary, backup = start_fakes(
            [f"primary-{tag}", f"backup-{tag}"], workdir, port=port, lifetime_s=lifetime
        )
        services += [primary, backup]
        upstreams = [
            {
                "name": "primary",
                "url": primary.url,
                "priority": 0,
                "timeout_s": settings.primary_timeout_s,
            },
            {"name": "backup", "url": backup.url, "priority": 1},
        ]
        extra = {
            "health": {"interval_s": settings.health_interval_s},
            "routing": {"hedge": hedge},
        }
        agg = start_aggregator(
            f"aggregator-{tag}", workdir, upstreams, extra=extra, cpu=SUT_CPU, lifetime_s=lifetime
        )
        services.append(agg)
        spec = verify_load(
            targets=[Target(HOST, agg.port)],
            rate=settings.fault_rate,
            duration_s=end_at,
            cpu=LOAD_CPU,
            timeout_s=10.0,
        )
        load = LoadRun(spec, workdir, f"load-{tag}").start()
        t0 = load.wait_started()
        _sleep_until(t0, fault_at)
        fault_s = _since(t0)
        _inject(mode, primary)
        _sleep_until(t0, recover_at)
        restarted = _recover(mode, primary, workdir, port, lifetime)
        recover_s = _since(t0)
        if restarted is not primary:
            services.append(restarted)
        result = load.result()
    finally:
        for service in reversed(services):
            service.stop()
    return _analyse(mode, hedge, result, fault_s, recover_s, end_at)


def _done_s(result: LoadResult, index: int) -> float:
    return result.scheduled_s(index) + result.latency_ms[index] / 1000


def _first(values: list[float]) -> float | None:
    return min(values) if values else None


def _analyse(
    mode: str, hedge: bool, result: LoadResult, fault_s: float, recover_s: float, end_s: float
) -> Scenario:
    everything = result.indices()
    before = result.indices(start_s=0, end_s=fault_s)
    during = result.indices(start_s=fault_s, end_s=recover_s)
    after_fault = result.indices(start_s=fault_s)
    from_backup = [i for i in after_fault if result.upstream[i] == "backup"]
    straight = [i for i in from_backup if result.attempts[i] == 1]
    back = [
        _done_s(result, i) - recover_s
        for i in result.indices(start_s=recover_s)
        if result.upstream[i] == "primary"
    ]
    points = [
        (
            result.scheduled_s(i),
            result.latency_ms[i],
            result.upstream[i] if result.ok(i) else "error",
        )
        for i in everything
    ]
    return Scenario(
        mode=mode,
        hedge=hedge,
        fault_s=fault_s,
        recover_s=recover_s,
        end_s=end_s,
        requests=len(everything),
        errors=sum(not result.ok(i) for i in everything),
        fault_errors=sum(not result.ok(i) for i in during),
        before=Summary.of([result.latency_ms[i] for i in before if result.ok(i)]),
        during=Summary.of([result.latency_ms[i] for i in during]),
        first_backup_s=_first([_done_s(result, i) - fault_s for i in from_backup]),
        straight_to_backup_s=_first([_done_s(result, i) - fault_s for i in straight]),
        tried_primary=sum(result.attempts[i] > 1 or result.upstream[i] != "backup" for i in during),
        fault_requests=len(during),
        primary_back_s=_first(back),
        generator_cpu=result.cpu_utilisation,
        generator_rate=result.achieved_rate,
        points=points,
    )


def run(settings: Settings, workdir: Path) -> FaultsResult:
    scenarios = [
        scenario(settings, workdir, mode, hedge)
        for mode in settings.fault_modes
        for hedge in (True, False)
    ]
    return FaultsResult(
        settings.fault_rate, settings.primary_timeout_s, settings.health_interval_s, scenarios
    )


def main() -> None:
    from .report import faults_section

    result = run_section(__doc__, run)
    print(faults_section(result))
    if any(math.isnan(s.during.p50) for s in result.scenarios):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
