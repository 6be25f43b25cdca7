"""A scratch directory for configs, logs and results: removed after a clean run, kept otherwise."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .settings import Settings

T = TypeVar("T")


@contextmanager
def workspace(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="x402-bench-"))
    try:
        yield path
    except BaseException:
        print(f"bench: logs kept in {path}", file=sys.stderr)
        raise
    if keep:
        print(f"bench: logs kept in {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


def run_section(doc: str | None, run: Callable[[Settings, Path], T]) -> T:
    """``python -m bench.<section> [--quick]``: run one section in its own workspace."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with workspace() as workdir:
        return run(Settings(quick=args.quick), workdir)
