"""``python -m bench [--quick] [--only SECTION ...]``: run the suite, print, write the docs.

Prints each section's markdown as it finishes, then writes ``docs/benchmarks.md`` and the
``docs/bench-*.png`` plots (a partial run with ``--only`` prints but writes nothing unless given
``--out``). A section that fails is reported in the document and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import faults, hotpath, ledger, machine, overhead, plots, report, settle, throughput
from .settings import Settings
from .workspace import workspace

DOCS = Path(__file__).resolve().parent.parent / "docs"
SECTIONS = ("overhead", "hotpath", "throughput", "faults", "settle", "ledger")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--out", type=Path, help=f"markdown to write (default {DOCS}/benchmarks.md)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick)
    chosen = args.only or list(SECTIONS)
    out: Path | None = args.out or (None if args.only else DOCS / "benchmarks.md")
    started = time.monotonic()
    info = machine.collect(machine.command_line())
    account = machine.CpuAccount()

    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    runners: dict[str, Callable[[Settings, Path], Any]] = {
        "overhead": overhead.run,
        "hotpath": hotpath.run,
        "throughput": throughput.run,
        "faults": faults.run,
        "settle": settle.run,
        "ledger": ledger.run,
    }
    with workspace(keep=args.keep) as workdir:
        for name in SECTIONS:
            if name not in chosen:
                continue
            print(f"\n## {name}", flush=True)
            began = time.monotonic()
            try:
                results[name] = runners[name](settings, workdir)
            except Exception as exc:  # one broken section must not hide the others
                traceback.print_exc()
                failures[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                if name == "overhead":
                    failures["memory"] = failures[name]
                continue
            print(_markdown(name, results[name]), flush=True)
            if name == "overhead":
                print("\n" + report.memory_section(results[name].memory), flush=True)
            print(f"({name}: {time.monotonic() - began:.0f} s)", flush=True)

    sections = {name: _markdown(name, value) for name, value in results.items()}
    if "overhead" in results:
        sections["memory"] = report.memory_section(results["overhead"].memory)
    summary = report.verdicts(
        results.get("overhead"), results.get("throughput"), results.get("faults")
    )
    elapsed = time.monotonic() - started
    print("\n## targets\n")
    for verdict in summary:
        met = {True: "met", False: "NOT met", None: "n/a"}[verdict.met]
        print(f"- {verdict.target}: {verdict.measured} -> {met}")
    print(f"\ntotal {elapsed:.0f} s")
    if out is not None:
        figures = _plots(results, out.parent)
        load = account.report()
        text = report.document(info, sections, figures, summary, elapsed, failures, load)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out} and {len(figures)} plots", flush=True)
    return 1 if failures else 0


def _markdown(name: str, result: Any) -> str:
    render: dict[str, Callable[[Any], str]] = {
        "overhead": report.overhead_section,
        "hotpath": report.hotpath_section,
        "throughput": report.throughput_section,
        "faults": report.faults_section,
        "settle": report.settle_section,
        "ledger": report.ledger_section,
    }
    return render[name](result)


def _plots(results: dict[str, Any], directory: Path) -> dict[str, str]:
    """Draw what was measured; returns section -> file name relative to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    makers: list[tuple[str, str, Callable[[Any, Path], Path], Callable[[Any], Any]]] = [
        ("overhead", "bench-overhead.png", plots.overhead, lambda r: r),
        ("memory", "bench-memory.png", plots.memory, lambda r: r.memory),
        ("throughput", "bench-throughput.png", plots.throughput, lambda r: r),
        ("faults", "bench-faults.png", plots.faults, lambda r: r),
        ("settle", "bench-settle.png", plots.settle, lambda r: r),
        ("ledger", "bench-ledger.png", plots.ledger, lambda r: r),
    ]
    drawn = {}
    for section, filename, draw, pick in makers:
        source = results.get("overhead" if section == "memory" else section)
        if source is None:
            continue
        draw(pick(source), directory / filename)
        drawn[section] = filename
    return drawn


if __name__ == "__main__":
    sys.exit(main())
