"""A scratch directory for configs, logs and results: removed after a clean run, kept otherwise."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
