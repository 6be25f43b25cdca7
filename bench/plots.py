"""PNG plots of a run (matplotlib, Agg backend): one function per figure, each returns its path."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .faults import MODES, FaultsResult
from .ledger import DIRECT, MEMORY, POSTGRES, SQLITE, LedgerResult
from .memory import MemoryResult
from .overhead import OverheadResult
from .settle import SettleResult
from .throughput import ThroughputResult

COLOURS = {"direct": "#4c72b0", "through": "#dd8452", "primary": "#4c72b0", "backup": "#55a868"}
LEDGER_COLOURS = {DIRECT: "#4c72b0", MEMORY: "#dd8452", SQLITE: "#55a868", POSTGRES: "#8172b3"}
ERROR = "#c44e52"


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nines(q: float) -> float:
    """Percentile axis that spreads the tail: 0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3."""
    return -math.log10(max(1 - q / 100, 1e-6))


def overhead(result: OverheadResult, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(result.rates), figsize=(4.2 * len(result.rates), 3.8))
    axes = axes if len(result.rates) > 1 else [axes]
    ticks = [50, 90, 99, 99.9]
    for ax, rate in zip(axes, result.rates, strict=True):
        for label, values in (("direct", rate.direct_sorted), ("through", rate.through_sorted)):
            n = len(values)
            if not n:
                continue
            xs = [_nines(100 * (i + 0.5) / n) for i in range(n)]
            name = "direct to upstream" if label == "direct" else "through aggregator"
            ax.plot(xs, values, color=COLOURS[label], label=name, linewidth=1.4)
        ax.set_xticks([_nines(t) for t in ticks], [f"p{t:g}" for t in ticks])
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(f"{rate.rate} req/s open loop")
        ax.set_ylabel("latency from scheduled send (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Verify latency by percentile (upstream latency {result.upstream_latency_ms:g} ms)"
    )
    return _save(fig, path)


def throughput(result: ThroughputResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [row.name for row in result.rows][::-1]
    rates = [row.result.rate for row in result.rows][::-1]
    bars = ax.barh(
        names, rates, color=["#8172b3" if "aggregator" in n else "#937860" for n in names]
    )
    for bar, rate in zip(bars, rates, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {rate:,.0f}", va="center")
    ax.set_xscale("log")
    ax.set_xlabel("verify/s (log scale)")
    ax.set_title(
        f"Throughput, wrk -t{result.threads} -c{result.connections} -d{result.seconds}s, "
        "zero-latency nginx upstream"
    )
    ax.set_xlim(left=100, right=max(rates) * 4 if rates else 1000)
    return _save(fig, path)


def faults(result: FaultsResult, path: Path) -> Path:
    modes = list(dict.fromkeys(s.mode for s in result.scenarios))
    fig, axes = plt.subplots(
        len(modes), 2, figsize=(12, 3.0 * len(modes)), squeeze=False, sharey=True
    )
    for scenario in result.scenarios:
        ax = axes[modes.index(scenario.mode)][0 if scenario.hedge else 1]
        for who, colour, marker in (
            ("primary", COLOURS["primary"], "."),
            ("backup", COLOURS["backup"], "."),
            ("error", ERROR, "x"),
        ):
            points = [(t, ms) for t, ms, by in scenario.points if by == who]
            if points:
                xs, ys = zip(*points, strict=True)
                label = f"answered by {who}" if who != "error" else "client error"
                ax.scatter(xs, ys, s=6, color=colour, marker=marker, label=label)
        ax.axvspan(scenario.fault_s, scenario.recover_s, color=ERROR, alpha=0.08)
        ax.axvline(scenario.fault_s, color=ERROR, linewidth=1)
        ax.axvline(scenario.recover_s, color="#55a868", linewidth=1, linestyle="--")
        ax.set_yscale("log")
        ax.set_xlim(0, scenario.end_s)
        hedge = "hedging on" if scenario.hedge else "hedging off"
        ax.set_title(f"{MODES[scenario.mode]}, {hedge}", fontsize=10)
        ax.set_xlabel("scheduled send (s); red line: fault, green dashed: recovery")
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Verify latency over time, {result.rate} req/s open loop, primary then backup")
    return _save(fig, path)


def memory(result: MemoryResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    phases = list(dict.fromkeys(phase for _, _, phase in result.series))
    cmap = plt.get_cmap("tab10")
    for number, phase in enumerate(phases):
        points = [(t, mib) for t, mib, p in result.series if p == phase]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, color=cmap(number), label=phase, linewidth=1.5)
    ax.axhline(result.idle_mib, color="grey", linestyle=":", label="idle after start-up")
    ax.set_xlabel("seconds")
    ax.set_ylabel("aggregator RSS (MiB)")
    ax.set_title("Aggregator resident memory during the overhead runs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def settle(result: SettleResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels = [f"{r.facilitator}\n{r.path}" for r in result.rows]
    xs = range(len(result.rows))
    width = 0.38
    verify = [r.verify.p50 for r in result.rows]
    settle_ = [r.settle.p50 for r in result.rows]
    ax.bar([x - width / 2 for x in xs], verify, width, label="verify p50", color="#4c72b0")
    ax.bar([x + width / 2 for x in xs], settle_, width, label="settle p50", color="#dd8452")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(f"Real payments on the test bed, {result.calls} calls each (p50)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def ledger(result: LedgerResult, path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    ticks = [50, 90, 99]
    for row in result.sequential:
        n = len(row.sorted_ms)
        if not n:
            continue
        xs = [_nines(100 * (i + 0.5) / n) for i in range(n)]
        colour = LEDGER_COLOURS.get(row.path)
        left.plot(xs, row.sorted_ms, color=colour, label=row.path, linewidth=1.4)
    left.set_xticks([_nines(t) for t in ticks], [f"p{t:g}" for t in ticks])
    left.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    left.yaxis.set_major_formatter(plain)
    left.yaxis.set_minor_formatter(plain)
    left.tick_params(axis="y", which="minor", labelsize=7)
    left.set_ylabel("settle latency (ms)")
    left.set_title(f"Sequential settles, {result.rounds} per path")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    names = [row.path for row in result.concurrent][::-1]
    rates = [row.rate for row in result.concurrent][::-1]
    bars = right.barh(names, rates, color=[LEDGER_COLOURS.get(n, "#937860") for n in names])
    for bar, rate in zip(bars, rates, strict=True):
        right.text(
            bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {rate:,.0f}", va="center"
        )
    right.set_xscale("log")
    right.set_xlim(left=max(min(rates, default=10) / 4, 1), right=max(rates, default=10) * 4)
    right.set_xlabel("settles/s (log scale)")
    right.set_title(f"{result.clients} clients, closed loop, {result.seconds:g} s per path")
    fig.suptitle("Settles direct and through the aggregator, by ledger database")
    return _save(fig, path)
