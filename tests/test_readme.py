"""The README's commands: CI runs exactly its test command, which checks what it needs first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first_screen_commands() -> list[str]:
    """The copyable commands of the README's first code block (comments left out)."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_the_first_screen_has_two_commands_and_ci_runs_the_test_one() -> None:
    """The README shows one demo and one test command; .ci/run runs that test command as is."""
    demo, test = first_screen_commands()

    assert demo.endswith("x402-aggregator demo")
    assert test in (ROOT / ".ci/run").read_text().splitlines()


def test_the_test_command_stops_before_any_test_when_it_cannot_install(tmp_path: Path) -> None:
    """Without apt-get, a missing package (here Node.js) stops scripts/test before any test runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in {"python3": sys.executable, "bash": "/bin/bash"}.items():
        (bin_dir / name).symlink_to(target)
    for name in ("dirname", "timeout"):
        (bin_dir / name).symlink_to(f"/usr/bin/{name}")

    result = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts/test")],
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "the tests need nodejs npm" in result.stderr
    assert "pytest" not in result.stdout + result.stderr
