"""Stopping what a task started: a whole process group, also what is left once its leader exits."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from model_delivery.operators.build import BuildModelOperator
from model_delivery.procs import alive, stop, tracked
from tests.helpers.processes import gone

# A leader that starts a grandchild, then exits on SIGINT (Python's KeyboardInterrupt) and leaves it.
LEADER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # md-test-grandchild"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _start() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", LEADER + "# md-test-leader"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _reaped_gone(proc: subprocess.Popen[str], pid: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (proc.poll() is not None and gone(pid)):
        time.sleep(0.05)
    return proc.poll() is not None and gone(pid)


def test_stop_kills_the_group_left_behind_by_a_leader_that_exits() -> None:
    import signal

    proc, grandchild = _start()
    assert alive(proc.pid, "md-test-leader") and psutil.pid_exists(grandchild)

    assert stop(proc.pid, "md-test-leader", first=signal.SIGINT) is True

    assert _reaped_gone(proc, grandchild), "the grandchild survived its leader"
    assert stop(proc.pid, "md-test-leader") is False  # not running any more: nothing to do


def test_on_kill_stops_the_process_groups_the_task_is_running() -> None:
    """What Airflow calls when it kills a task (marked failed, execution_timeout)."""
    proc, grandchild = _start()
    with tracked(proc.pid, "md-test-leader"):
        BuildModelOperator(task_id="build", model="m").on_kill()
    assert _reaped_gone(proc, grandchild)
