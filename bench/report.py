"""Markdown for each section and the whole ``docs/benchmarks.md``; verdicts against the targets."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .faults import MODES, FaultsResult
from .hotpath import Profile
from .ledger import DIRECT, MEMORY, POSTGRES, LedgerResult
from .machine import Machine
from .memory import MemoryResult
from .overhead import (
    MAX_DISPATCH_LAG_P99_US,
    MAX_GENERATOR_CPU,
    MIN_RATE_SHARE,
    OverheadResult,
)
from .services import LOAD_CPU, SUT_CPU
from .settle import SettleResult
from .stats import ms
from .throughput import AGGREGATOR, NGINX, WORKERS, ThroughputResult

#: Targets from the benchmarks issue.
ADDED_P50_MS = 0.5
ADDED_P99_MS = 2.0
TARGET_RATE = 500
MIN_VERIFY_PER_S = 4000


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  #: None: not measured in this run


def _yes(met: bool | None) -> str:
    return "n/a" if met is None else ("**yes**" if met else "**no**")


def _s(value: float | None, limit: float | None = None) -> str:
    if value is None:
        return f"not within {limit:.1f}" if limit is not None else "-"
    return f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- sections ------------------------------------------------------------------------------


def overhead_section(result: OverheadResult) -> str:
    rows = []
    for r in result.rates:
        for name, s, errors in (
            ("direct to upstream", r.direct, r.direct_errors),
            ("through aggregator", r.through, r.through_errors),
        ):
            rows.append(
                [str(r.rate), name, str(s.count), str(errors)]
                + [ms(v) for v in (s.p50, s.p90, s.p99, s.max)]
            )
        a = r.added
        rows.append(
            [str(r.rate), "**added**", "", ""]
            + [f"**{ms(v)}**" for v in (a.p50, a.p90, a.p99, a.max)]
        )
    latency = _table(
        ["rate (req/s)", "path", "requests", "errors", "p50", "p90", "p99", "max"], rows
    )
    gen_rows = []
    for r in result.rates:
        g = r.generator
        gen_rows.append(
            [
                str(r.rate),
                f"{g.achieved_rate:,.1f}",
                f"{100 * g.cpu:.1f} %",
                f"{g.lag_p50_us:.0f} / {g.lag_p99_us:.0f}",
                g.scheduling,
                g.verdict,
            ]
        )
    generator = _table(
        [
            "target rate (req/s)",
            "achieved send rate",
            "generator CPU (one core)",
            "dispatch lag p50 / p99 (µs)",
            "scheduling",
            "verdict",
        ],
        gen_rows,
    )
    seconds = result.rates[0].seconds_per_path if result.rates else 0
    return "\n\n".join(
        [
            f"Open-loop verify load, fake upstream with {result.upstream_latency_ms:g} ms latency, "
            f"{seconds:g} s per path at each rate (direct and through take turns in "
            f"{result.block_s:g} s blocks). "
            "Latency in ms from each request's *scheduled* send time; *added* is through minus "
            "direct, quantile by quantile.",
            latency,
            "The load generator (its own process on its own core):",
            generator,
            f"Saturated means CPU above {100 * MAX_GENERATOR_CPU:.0f} % or a send rate below "
            f"{100 * MIN_RATE_SHARE:.0f} % of the target. Dispatch lag is how long after its "
            "scheduled instant a request was handed to a connection; it is part of every "
            "latency above (both paths alike); a p99 above "
            f"{MAX_DISPATCH_LAG_P99_US:.0f} µs is flagged.",
        ]
    )


def throughput_section(result: ThroughputResult) -> str:
    nginx_row = result.row(NGINX)
    nginx_rate = nginx_row.result.rate if nginx_row else math.nan
    rows = []
    for row in result.rows:
        w = row.result
        cpu = " / ".join(f"{w.cpu.get(k, math.nan):.2f}" for k in ("wrk", "proxy", "upstream"))
        ratio = w.rate / nginx_rate if nginx_rate == nginx_rate and nginx_rate else math.nan
        rows.append(
            [
                row.name,
                row.placement,
                f"**{w.rate:,.0f}**",
                f"{w.p50_ms:.2f} / {w.p99_ms:.2f}",
                str(w.errors),
                cpu.replace("nan", "-"),
                f"{ratio:.3f}" if ratio == ratio else "-",
            ]
        )
    table = _table(
        [
            "path",
            "placement",
            "verify/s",
            "p50 / p99 (ms, closed loop)",
            "errors",
            "CPU wrk / proxy / upstream (cores)",
            "÷ nginx",
        ],
        rows,
    )
    return "\n\n".join(
        [
            f"`wrk -t{result.threads} -c{result.connections} -d{result.seconds}s -s post.lua` "
            "(wrk: C, epoll, one thread, closed loop) POSTing one v2 verify body, pinned to "
            f"core {LOAD_CPU}. Upstream: nginx answering `/verify` and `/supported` from its "
            "configuration (primary and backup ports); the nginx proxy and the aggregator both "
            "have the primary and the backup. Errors = socket errors + non-2xx answers.",
            table,
            "A CPU figure near 1.00 means that process had its whole core: it was the "
            "bottleneck. wrk's latencies are closed-loop (they understate queueing); the "
            "open-loop figures are in section 1.",
            *_scaling(result),
        ]
    )


def _scaling(result: ThroughputResult) -> list[str]:
    """``--workers 2`` against one process, as measured and per aggregator core-second.

    On two cores the workers share them with wrk, so the measured ratio understates what two
    cores of their own give; verify/s per core of aggregator CPU (each row's own CPU use) takes
    the generator's cost out: twice the workers' per-core rate is the two-core figure.
    """
    one, two = result.row(AGGREGATOR), result.row(WORKERS)
    if one is None or two is None or not one.result.rate:
        return []
    one_cpu, two_cpu = one.result.cpu.get("proxy", 0.0), two.result.cpu.get("proxy", 0.0)
    measured = two.result.rate / one.result.rate
    if not one_cpu or not two_cpu:
        return [f"`--workers 2` ÷ 1 process: {measured:.2f}x as measured."]
    per_core_one, per_core_two = one.result.rate / one_cpu, two.result.rate / two_cpu
    return [
        f"`--workers 2` ÷ 1 process: {measured:.2f}x as measured (workers sharing both cores "
        f"with wrk); per aggregator core-second {per_core_two:,.0f} vs {per_core_one:,.0f} "
        f"verify/s, so two cores of their own would give "
        f"{2 * per_core_two / per_core_one:.2f}x one process."
    ]


def faults_section(result: FaultsResult) -> str:
    rows = []
    for s in result.scenarios:
        target = s.p99_target_ms
        after = s.end_s - s.recover_s
        rows.append(
            [
                MODES[s.mode],
                "on (adaptive)" if s.hedge else "off",
                f"{s.fault_errors} / {s.errors}",
                f"{ms(s.during.p50, 1)} / {ms(s.during.p99, 1)} / {ms(s.during.max, 1)}",
                _s(s.first_backup_s),
                _s(s.straight_to_backup_s),
                f"{s.tried_primary} of {s.fault_requests}",
                _s(s.primary_back_s, after),
                f"≤ {target:.1f}" if target is not None else "-",
                _yes(s.met),
            ]
        )
    table = _table(
        [
            "fault",
            "hedging",
            "client errors (during fault / whole run)",
            "p50 / p99 / max during fault (ms)",
            "first answer from backup after (s)",
            "straight to backup after (s)",
            "requests that tried the primary first",
            "primary answers again after recovery (s)",
            "p99 target (ms)",
            "target met",
        ],
        rows,
    )
    first = result.scenarios[0] if result.scenarios else None
    timing = (
        f"fault at {first.fault_s:.1f} s, recovery at about {first.recover_s:.1f} s, load until "
        f"{first.end_s:g} s"
        if first
        else ""
    )
    return "\n\n".join(
        [
            f"{result.rate} verify/s open loop through the aggregator; primary (priority 0, "
            f"verify timeout {result.primary_timeout_s:g} s) and backup are fake facilitators with "
            f"1 ms latency; `health.interval_s: {result.health_interval_s:g}`; {timing}. "
            '"During fault" = requests scheduled between fault and recovery. Times run from '
            "the fault to the *answer* of the first request answered by the backup (at all, or "
            "in one attempt: the primary no longer tried first), and from the recovery to the "
            "answer of the first request sent after it that the primary answered. For a stopped "
            "primary, recovery is when the restarted process listened again.",
            table,
            (
                "Load generator: at most "
                f"{100 * max((s.generator_cpu for s in result.scenarios), default=0):.1f} % of its "
                "core, sending at "
                f"{min((s.generator_rate for s in result.scenarios), default=0):.1f} req/s or "
                f"more (target {result.rate}): not saturated."
                if all(s.generator_cpu < MAX_GENERATOR_CPU for s in result.scenarios)
                else "Load generator: **saturated** in at least one scenario (CPU above "
                f"{100 * MAX_GENERATOR_CPU:.0f} %)."
            ),
            "Targets: no client errors at all; with hedging, p99 during a hang at most the hedge "
            "delay (the adaptive delay's 50 ms floor) plus the backup's latency (the p99 before "
            "the fault).",
        ]
    )


def settle_section(result: SettleResult) -> str:
    rows = []
    by_name: dict[str, dict[str, tuple[float, float]]] = {}
    for r in result.rows:
        rows.append(
            [
                r.facilitator,
                r.path,
                ms(r.verify.p50, 1),
                ms(r.verify.p90, 1),
                ms(r.settle.p50, 1),
                ms(r.settle.p90, 1),
            ]
        )
        by_name.setdefault(r.facilitator, {})[r.path] = (r.verify.p50, r.settle.p50)
    for name, paths in by_name.items():
        if "direct" in paths and "through aggregator" in paths:
            (dv, ds), (tv, ts) = paths["direct"], paths["through aggregator"]
            rows.append(
                [name, "**added (p50)**", f"**{tv - dv:+.1f}**", "", f"**{ts - ds:+.1f}**", ""]
            )
    table = _table(
        ["facilitator", "path", "verify p50", "verify p90", "settle p50", "settle p90"], rows
    )
    return "\n\n".join(
        [
            "Real signed payments on the local test bed: EIP-3009 on anvil + USDC; `exact` by "
            "Permit2 and `upto` (settled at 75% of its maximum) in a plain ERC-20 on the same "
            "chain (rows marked Permit2, upto); and Solana `exact` on a local Solana VM "
            "(litesvm) with a USDC-like SPL token (rows marked Solana); the bed started in "
            f"{result.startup_s:.1f} s. "
            f"{result.calls} sequential verify + settle pairs per path "
            f"(after {result.warmup} warm-up pairs), alternating direct and through the "
            "aggregator; ms.",
            table,
            "Through the aggregator, every settle is also written to its settlement ledger (the "
            "default: a SQLite file, here in the scratch directory) before it is sent; section 5 "
            "measures what the ledger costs.",
        ]
    )


def ledger_section(result: LedgerResult) -> str:
    ledgers = {
        DIRECT: "none (no aggregator)",
        MEMORY: "`sqlite:///:memory:` (no durability)",
        "SQLite file": "`sqlite:///…/ledger.db` (WAL, `synchronous=FULL`)",
        POSTGRES: f"PostgreSQL {result.postgres_version} (fsync, `synchronous_commit` on)",
    }
    seq_rows = [
        [r.path, ledgers.get(r.path, ""), str(r.latency.count), str(r.errors)]
        + [ms(v) for v in (r.latency.p50, r.latency.p90, r.latency.p99, r.latency.max)]
        for r in result.sequential
    ]
    sequential = _table(
        ["path", "ledger", "settles", "errors", "p50", "p90", "p99", "max"], seq_rows
    )
    cost_rows = []
    for w in result.write_ahead():
        versus_memory = (
            ["-", "-"]
            if w.path == MEMORY
            else [f"**{w.vs_memory.p50:+.2f}**", f"**{w.vs_memory.p99:+.2f}**"]
        )
        cost_rows.append(
            [w.path, *versus_memory, f"{w.vs_direct.p50:+.2f}", f"{w.vs_direct.p99:+.2f}"]
        )
    cost = _table(
        [
            "ledger",
            "added p50 vs `:memory:`",
            "added p99 vs `:memory:`",
            "added p50 vs direct",
            "added p99 vs direct",
        ],
        cost_rows,
    )
    memory = next((r for r in result.concurrent if r.path == MEMORY), None)
    conc_rows = []
    for r in result.concurrent:
        cpu = " / ".join(
            f"{r.cpu[k]:.2f}" if k in r.cpu else "-"
            for k in ("generator", "aggregator", "upstream", "postgres")
        )
        busy = sum(v for k, v in r.cpu.items() if k != "generator")
        ratio = f"{r.rate / memory.rate:.2f}" if memory is not None and memory.rate else "-"
        generator = "**saturated**" if r.generator_saturated else "not saturated"
        if r.exhausted:
            generator += "; **ran out of pre-built payments** (window cut short)"
        conc_rows.append(
            [
                r.path,
                f"**{r.rate:,.0f}**",
                ratio if r.path != DIRECT else "-",
                f"{ms(r.latency.p50, 1)} / {ms(r.latency.p99, 1)}",
                str(r.errors),
                cpu,
                f"{busy:.2f}",
                generator,
            ]
        )
    concurrent = _table(
        [
            "path",
            "settles/s",
            "÷ `:memory:`",
            "p50 / p99 (ms, closed loop)",
            "errors",
            "CPU generator / aggregator / upstream / PostgreSQL (cores)",
            "under test, total (cores)",
            "generator",
        ],
        conc_rows,
    )
    samples = sorted({e for r in result.concurrent for e in r.error_samples})
    samples += [e for e in result.sequential_errors if e not in samples]
    errors = (
        "Errors seen: " + "; ".join(f"`{e}`" for e in samples) + "."
        if samples
        else "No errors: every settle was answered HTTP 200 with `success: true`."
    )
    saturated = any(r.generator_saturated or r.exhausted for r in result.concurrent)
    busiest = max((r.cpu.get("generator", 0.0) for r in result.concurrent), default=0.0)
    f = result.fsync
    return "\n\n".join(
        [
            "One fake facilitator with no added latency (it answers every settle with "
            "success), direct and through three aggregators that differ only in "
            "`ledger.url`. Through a ledger, every settle is claimed and its attempt written "
            "before it is sent upstream, and its outcome written before the answer. Every "
            "request is a new payment (a `v2_body` with a fresh EIP-3009 nonce; all request "
            "bytes built before the clock starts). A closed-loop generator in its own process "
            f"(`bench/settleload.py`); placement: {result.placement}.",
            f"**Sequential**: {result.rounds} settles per path, one at a time, the four paths "
            f"taking turns request by request (after {result.warmup_rounds} warm-up rounds); ms "
            "from writing the request to the end of the answer.",
            sequential,
            "**Cost of the write-ahead**: the durable ledgers minus the in-memory one (same "
            "code, no fsync, no server round trips), and each aggregator minus direct (the "
            "whole settle path), quantile by quantile, ms.",
            cost,
            f"**Concurrent**: {result.clients} clients, closed loop (each sends its next settle "
            f"when the previous answer arrives), {result.warmup_s:g} s warm-up then "
            f"{result.seconds:g} s measured per path, one path after the other. Errors = any "
            "answer other than HTTP 200 with `success: true`, or none. CPU is CPU time / wall "
            "time over the window. The processes under test share one core (see placement): a "
            "total near 1.00 means that core was the limit, a lower one that settles were "
            "waiting (on fsync, on the database, on locks).",
            concurrent,
            errors,
            (
                "Load generator: **saturated or short of payments** in at least one run: the "
                "figures of that run say little about the server."
                if saturated
                else f"Load generator: at most {100 * busiest:.1f} % of its core "
                f"({100 * result.sequential_generator_cpu:.1f} % in the sequential run): not "
                "saturated."
            ),
            f"fsync on the scratch directory's file system, {result.fsync_where} (append 4 KiB "
            f"+ fsync, {f.count} times): p50 {ms(f.p50)} ms, p99 {ms(f.p99)} ms, max "
            f"{ms(f.max)} ms. PostgreSQL's data directory: {result.postgres_where}.",
        ]
    )


def memory_section(result: MemoryResult) -> str:
    table = _table(
        ["aggregator process", "RSS (MiB)"],
        [
            [f"idle, {result.pause_s:g} s after start-up", f"{result.idle_mib:.1f}"],
            [f"peak during the {result.peak_phase} run", f"{result.peak_mib:.1f}"],
            [f"{result.pause_s:g} s after the last load", f"{result.after_mib:.1f}"],
        ],
    )
    return (
        "Resident set size of the `x402-aggregator serve` process (psutil, sampled every "
        "100 ms during the overhead runs; every request carries a new payment nonce).\n\n" + table
    )


def hotpath_section(profile: Profile) -> str:
    own = _table(
        ["our frame (x402_aggregator.*)", "inclusive", "self"],
        [
            [f"`{f.name}`", f"{100 * f.inclusive:.1f} %", f"{100 * f.self_:.1f} %"]
            for f in profile.own
        ],
    )
    libs = _table(
        ["library (innermost Python frame)", "self", "below the event loop on the stack"],
        [
            [f.name, f"{100 * f.self_:.1f} %", f"{100 * f.inclusive:.1f} %" if f.inclusive else "-"]
            for f in profile.libraries
        ],
    )
    return "\n\n".join(
        [
            f"`py-spy record -r {profile.sampling_hz} -d {profile.seconds} -f raw --nolineno` on "
            f"the aggregator under {profile.rate} verify/s open loop (aggregator alone on core "
            f"{SUT_CPU}; the upstream and generator on core {LOAD_CPU}). {profile.samples} busy "
            "samples (idle ones left out), percentages of those. *Inclusive*: the frame is on "
            "the stack; *self*: it is the innermost Python frame (time in C code it calls "
            "counts here too, e.g. a socket write). The native event loop row is time in "
            "uvloop's C code (polling, transports, callback dispatch) with no Python frame of "
            "its own.",
            own,
            libs,
        ]
    )


# --- the whole document --------------------------------------------------------------------


def verdicts(
    overhead: OverheadResult | None,
    throughput: ThroughputResult | None,
    faults: FaultsResult | None,
) -> list[Verdict]:
    out: list[Verdict] = []
    at = overhead.at(TARGET_RATE) if overhead else None
    if at is not None:
        a = at.added
        out.append(
            Verdict(
                f"added p50 ≤ {ADDED_P50_MS} ms at {TARGET_RATE} req/s",
                f"{a.p50:.2f} ms",
                a.p50 <= ADDED_P50_MS,
            )
        )
        out.append(
            Verdict(
                f"added p99 ≤ {ADDED_P99_MS:g} ms at {TARGET_RATE} req/s",
                f"{a.p99:.2f} ms",
                a.p99 <= ADDED_P99_MS,
            )
        )
    if overhead is not None:
        busiest = max(overhead.rates, key=lambda r: r.generator.cpu, default=None)
        if busiest is not None:
            g = busiest.generator
            out.append(
                Verdict(
                    "load generator not saturated",
                    f"max CPU {100 * g.cpu:.1f} % of a core, sends at "
                    f"{100 * min(r.generator.achieved_rate / r.rate for r in overhead.rates):.1f} "
                    "% of target or better",
                    not any(r.generator.saturated for r in overhead.rates),
                )
            )
    if throughput is not None:
        agg, ngx = throughput.row(AGGREGATOR), throughput.row(NGINX)
        if agg is not None:
            ratio = f" ({agg.result.rate / ngx.result.rate:.3f} x nginx)" if ngx else ""
            out.append(
                Verdict(
                    f"≥ {MIN_VERIFY_PER_S:,} verify/s, one process",
                    f"{agg.result.rate:,.0f} verify/s{ratio}",
                    agg.result.rate >= MIN_VERIFY_PER_S,
                )
            )
    if faults is not None:
        for s in faults.scenarios:
            hedge = "hedging on" if s.hedge else "hedging off"
            measured = f"{s.errors} errors"
            target = "0 client errors"
            if s.p99_target_ms is not None:
                measured += f", p99 {s.during.p99:.1f} ms (limit {s.p99_target_ms:.1f})"
                target += ", p99 ≤ hedge delay + backup latency"
            out.append(Verdict(f"{MODES[s.mode]}, {hedge}: {target}", measured, s.met))
    return out


def document(
    machine: Machine,
    sections: Mapping[str, str],
    plots: Mapping[str, str],
    summary: list[Verdict],
    elapsed_s: float,
    failures: Mapping[str, str],
    load: tuple[float, float, float],
) -> str:
    others, ours, steal = load
    versions = ", ".join(f"{k} {v}" for k, v in machine.versions.items())
    parts = [
        "# Benchmarks",
        "Generated by the benchmark suite in `bench/`; every table and plot below comes from one "
        "run on the machine described here. Do not edit by hand: run it again.",
        _table(
            ["", ""],
            [
                ["command", f"`{machine.command}` (took {elapsed_s:.0f} s)"],
                ["date", machine.date],
                ["source revision", machine.revision],
                [
                    "machine",
                    f"{machine.nproc} cores (`nproc`), {machine.cpu_model}, "
                    f"{machine.memory_gib:.0f} GiB, {machine.kernel}",
                ],
                ["versions", versions],
                [
                    "background load",
                    f"during the run, other processes used {others:.2f} cores on average "
                    f"(this suite {ours:.2f}); hypervisor steal {steal:.2f} cores",
                ],
                [
                    "placement",
                    f"load generators (Python open loop, wrk) on core {LOAD_CPU}; the aggregator "
                    f"and its upstreams on core {SUT_CPU} (`taskset`), unless a table says "
                    "otherwise",
                ],
            ],
        ),
        "## Targets",
        _table(
            ["target", "measured", "met"],
            [[v.target, v.measured, _yes(v.met)] for v in summary],
        ),
    ]
    titles = {
        "overhead": "1. Overhead (added latency, open loop)",
        "throughput": "2. Throughput (wrk, zero-latency upstream)",
        "faults": "3. Faults under load",
        "settle": "4. Settle path (real test bed)",
        "ledger": "5. Settlement ledger (settles/s, cost of the write-ahead)",
        "memory": "6. Memory",
        "hotpath": "7. Hot path (py-spy)",
    }
    for key, title in titles.items():
        parts.append(f"## {title}")
        if key in failures:
            parts.append(f"**This section failed in this run:** `{failures[key]}`")
            continue
        if key not in sections:
            parts.append("Not run (`--only`).")
            continue
        parts.append(sections[key])
        if key in plots:
            parts.append(f"![{title}]({plots[key]})")
    parts.append("## Method")
    parts.append(METHOD)
    return "\n\n".join(parts) + "\n"


METHOD = """\
- **Open-loop generator** (`bench/loadgen.py`, sections 1, 3, 6, 7): its own process, pinned to
  its core with `os.sched_setaffinity`. Request *i* is due at *t0 + i/rate*; a Linux `timerfd`
  wakes the generator at those instants (nanosecond deadlines rather than the event loop's
  millisecond timers) and the request goes out at once on a keep-alive connection, a new one
  being opened if all are busy, so a slow server never slows the sender. Latency is measured from
  the scheduled time, so coordinated omission cannot hide a stall. Each request carries a new
  payment nonce. The client is a minimal HTTP/1.1 client on uvloop (`bench/rawhttp.py`): no task
  per request, prebuilt request bytes.
- **Added latency** is the difference of the two paths' percentiles (the paths cannot be paired
  request by request). Both paths include the same generator and kernel costs.
- **wrk** (section 2) is closed loop: 32 connections each send the next request when the
  previous answer arrives. It measures capacity, not latency under a given load.
- **Closed-loop settle generator** (`bench/settleload.py`, section 5): its own process on the
  load core, the same HTTP client; a fixed number of connections each send the next settle when
  the previous answer arrives (one connection for the sequential run). Every request is a new
  payment, its bytes built before the clock starts.
- **Processes**: everything is started with `x402_aggregator.localnet.process.spawn` (bounded
  lifetime, own process group, stopped at the end) and listens on 127.0.0.1 only. The aggregator
  is `x402-aggregator serve --config FILE` with `log_level: warning`.
- The machine is a shared 2-core VM: numbers move between runs by tens of percent; compare rows
  of the same run rather than runs.
"""
