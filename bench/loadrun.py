"""Start the load generator process (:mod:`bench.loadgen`) and read back what it measured."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.localnet.process import Child, spawn, wait_for_line

from .loadgen import START_MARKER, LoadResult, LoadSpec, Target

_NONCE_MARK = "0x" + "f" * 64


def verify_load(
    targets: Sequence[Target], rate: float, duration_s: float, **options: Any
) -> LoadSpec:
    """A schedule of v2 ``/verify`` requests, each a new payment (fresh nonce)."""
    body = orjson.dumps(v2_body(nonce=_NONCE_MARK)).decode()
    prefix, suffix = body.split(_NONCE_MARK)  # exactly one nonce: the EIP-3009 authorization
    return LoadSpec(
        targets=list(targets),
        body_prefix=prefix,
        body_suffix=suffix,
        rate=rate,
        duration_s=duration_s,
        **options,
    )


class LoadRun:
    """A generator process: ``start``, ``wait_started`` (gives t0), then ``result``."""

    def __init__(self, spec: LoadSpec, workdir: Path, name: str) -> None:
        self.spec = spec
        self.name = name
        self.spec_path = workdir / f"{name}.spec.json"
        self.result_path = workdir / f"{name}.result.json"
        self.workdir = workdir
        self.child: Child | None = None
        self.t0_ns = 0

    def start(self) -> LoadRun:
        spec = asdict(self.spec)
        self.spec_path.write_text(json.dumps(spec))
        lifetime = self.spec.duration_s + self.spec.timeout_s + 60
        self.child = spawn(
            self.name,
            [sys.executable, "-m", "bench.loadgen", str(self.spec_path), str(self.result_path)],
            lifetime_s=lifetime,
            cwd=Path(__file__).resolve().parent.parent,
            log_dir=self.workdir,
        )
        return self

    def wait_started(self, timeout_s: float = 60.0) -> int:
        """Block until the schedule's t0 is known (CLOCK_MONOTONIC ns, like time.monotonic_ns)."""
        assert self.child is not None
        line = wait_for_line(self.child, START_MARKER, timeout_s)
        self.t0_ns = int(line.split(START_MARKER, 1)[1].strip())
        return self.t0_ns

    def result(self) -> LoadResult:
        assert self.child is not None
        limit = self.spec.duration_s + self.spec.timeout_s + 30
        try:
            code = self.child.process.wait(timeout=limit)
        finally:
            self.child.stop()
        if code != 0 or not self.result_path.exists():
            raise RuntimeError(f"load generator failed ({code}):\n{self.child.log_tail()}")
        return LoadResult.load(self.result_path)


def run_load(spec: LoadSpec, workdir: Path, name: str) -> LoadResult:
    """Run one schedule to the end and return what it measured."""
    run = LoadRun(spec, workdir, name).start()
    run.wait_started()
    return run.result()
