"""Test bed processes never outlive the process that started them, nor die with its threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from x402_aggregator.localnet.process import Child, spawn, wait_for_line

SLEEPER = [sys.executable, "-c", "print('up', flush=True); import time; time.sleep(60)"]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pgid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_children_die_when_the_process_that_started_them_is_killed() -> None:
    """A test run killed with SIGKILL (no clean-up code runs) leaves no chain behind."""
    script = (
        "import time\n"
        "from x402_aggregator.localnet.chain import start_chain\n"
        "chain = start_chain(lifetime_s=60)\n"
        "print(chain.child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pgid = int(parent.stdout.readline())
        assert group_alive(pgid)

        parent.kill()
        parent.wait(timeout=10)

        assert wait_gone(pgid), "anvil outlived the process that started it"
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()


def test_children_end_by_themselves_after_their_lifetime() -> None:
    """A child's lifetime bounds it even if nobody ever stops it."""
    child = spawn(
        "sleeper",
        SLEEPER,
        lifetime_s=1,
    )
    wait_for_line(child, "up", timeout_s=10)

    assert child.process.wait(timeout=10) == 124  # coreutils timeout's "time is up"
    assert wait_gone(child.pid)


def test_stop_ends_the_whole_process_group() -> None:
    """stop() ends the wrapper and the command it runs, and can be called twice."""
    child = spawn(
        "sleeper",
        SLEEPER,
        lifetime_s=60,
    )
    wait_for_line(child, "up", timeout_s=10)

    child.stop()
    child.stop()

    assert not group_alive(child.pid)


def test_children_outlive_the_thread_that_started_them() -> None:
    """A child started from a short-lived thread keeps running after that thread has ended."""
    started: list[Child] = []
    starter = threading.Thread(
        target=lambda: started.append(spawn("sleeper", SLEEPER, lifetime_s=60))
    )
    starter.start()
    starter.join(timeout=10)
    [child] = started
    try:
        time.sleep(1.5)  # the parent-death signal used to arrive well within this

        assert child.alive(), (
            f"the child ended with {child.process.returncode}:\n{child.log_tail()}"
        )
        wait_for_line(child, "up", timeout_s=10)
    finally:
        child.stop()
    assert wait_gone(child.pid)
