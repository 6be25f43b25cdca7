"""Where a verify's CPU goes: py-spy samples of the aggregator under open-loop load.

The aggregator runs alone on the system-under-test core while a fake upstream and the load
generator share the other one: on a shared core, time the upstream spends running would show up
in the aggregator's profile as a long ``write`` (py-spy samples a runnable thread, not only a
running one). ``py-spy record -f raw --nolineno`` gives collapsed stacks; idle samples (waiting
in epoll) are left out by py-spy, so percentages are of busy samples.

    python -m bench.hotpath [--quick]
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from x402_aggregator.localnet.process import spawn

from .loadgen import Target
from .loadrun import LoadRun, verify_load
from .services import HOST, LOAD_CPU, SUT_CPU, start_aggregator, start_fake
from .settings import Settings
from .workspace import run_section

OWN = "x402_aggregator/"
#: The innermost frame when uvloop runs native code (callbacks, syscalls) under Runner.run.
EVENT_LOOP_FRAME = "Runner.run (asyncio/runners.py)"


@dataclass(frozen=True, slots=True)
class Frame:
    name: str
    inclusive: float  #: share of busy samples with this frame on the stack
    self_: float  #: share of busy samples with this frame innermost


@dataclass(slots=True)
class Profile:
    samples: int
    seconds: int
    rate: int
    sampling_hz: int
    own: list[Frame]
    libraries: list[Frame]


def py_spy() -> str:
    return str(Path(sys.executable).with_name("py-spy"))


def _library(frame: str) -> str:
    """'call (aiohttp/client.py)' -> 'aiohttp'; stdlib modules get a '(stdlib)' mark."""
    if frame == EVENT_LOOP_FRAME:
        return "uvloop event loop (native)"
    if "(" not in frame:
        return frame
    where = frame.rsplit("(", 1)[1].rstrip(")")
    root = where.split("/", 1)[0].removesuffix(".py")
    if root in sys.stdlib_module_names:
        return f"{root} (stdlib)"
    if root.startswith("<"):
        return "generated code (dataclasses, ...)"
    return root


def parse(raw: str, top: int = 12) -> tuple[int, list[Frame], list[Frame]]:
    """Collapsed stacks -> (busy samples, top own frames, top libraries)."""
    total = 0
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    lib_inclusive: Counter[str] = Counter()
    lib_self: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if EVENT_LOOP_FRAME not in frames:
            # Another thread (the ledger's SQLite worker waiting for work, which py-spy does
            # not always see as idle): the hot path is the event loop's thread.
            continue
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        self_[frames[-1]] += n
        # A library is "on the stack" when it is among the frames the event loop called (the
        # entry point, typer and uvicorn.run sit above every sample and would be 100 %).
        loop_at = frames.index(EVENT_LOOP_FRAME)
        for library in {_library(f) for f in frames[loop_at + 1 :]}:
            lib_inclusive[library] += n
        lib_self[_library(frames[-1])] += n
    if not total:
        return 0, [], []
    own = [
        Frame(f, n / total, self_[f] / total)
        for f, n in inclusive.most_common()
        if OWN in f and n / total < 0.99  # leave out the entry point (cli.main, serve)
    ][:top]
    libraries = [
        Frame(lib, lib_inclusive[lib] / total, n / total) for lib, n in lib_self.most_common(top)
    ]
    return total, own, libraries


def run(settings: Settings, workdir: Path) -> Profile:
    seconds = settings.profile_seconds
    lifetime = seconds + 90
    fake = start_fake(
        "profile-upstream",
        workdir,
        latency_ms=settings.upstream_latency_ms,
        cpu=LOAD_CPU,
        lifetime_s=lifetime,
    )
    try:
        agg = start_aggregator(
            "profile-aggregator",
            workdir,
            [{"name": "upstream", "url": fake.url}],
            cpu=SUT_CPU,
            lifetime_s=lifetime,
        )
        try:
            spec = verify_load(
                targets=[Target(HOST, agg.port)],
                rate=settings.profile_rate,
                duration_s=seconds + 2,
                cpu=LOAD_CPU,
            )
            load = LoadRun(spec, workdir, "profile-load").start()
            load.wait_started()
            time.sleep(spec.lead_s + 0.5)
            out = workdir / "profile.raw"
            argv = [
                py_spy(),
                "record",
                "-p",
                str(agg.main_process().pid),
                "-d",
                str(seconds),
                "-r",
                str(settings.profile_sampling_hz),
                "-f",
                "raw",
                "--nolineno",
                "-o",
                str(out),
            ]
            spy = spawn("py-spy", argv, lifetime_s=seconds + 30, log_dir=workdir)
            code = spy.process.wait(timeout=seconds + 25)
            spy.stop()
            load.result()
            if code != 0 or not out.exists():
                raise RuntimeError(f"py-spy failed ({code}):\n{spy.log_tail()}")
        finally:
            agg.stop()
    finally:
        fake.stop()
    samples, own, libraries = parse(out.read_text())
    return Profile(
        samples, seconds, settings.profile_rate, settings.profile_sampling_hz, own, libraries
    )


def main() -> None:
    from .report import hotpath_section

    result = run_section(__doc__, run)
    print(hotpath_section(result))


if __name__ == "__main__":
    main()
