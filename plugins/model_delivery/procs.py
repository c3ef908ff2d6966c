"""Processes a task starts: alive checks that survive pid reuse, stopping a whole process group,
and the groups a task is running now (what ``on_kill`` stops)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

_RUNNING: dict[int, str] = {}
_RUNNING_LOCK = threading.Lock()


def alive(pid: int | None, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains ``marker`` (guards against pid reuse)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and marker in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def stop(pid: int | None, marker: str, timeout: float = 10.0, first: int = signal.SIGTERM) -> bool:
    """Stop a process we started (``first``, then SIGKILL to its whole group); False if it was not running.

    Processes are started in a session of their own, so the group is what they started
    themselves (vLLM's engine and workers, Ansible's forks and SSH connections, a build's
    children): what is left of it once the leader has stopped, or after ``timeout``, is killed.
    """
    if not alive(pid, marker):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid, marker):
        time.sleep(0.1)
    try:
        leads = os.getpgid(pid) == pid  # still (or a zombie) the leader of its own group, not a reused pid
    except ProcessLookupError:
        leads = False
    if leads:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    else:  # the leader is gone: what is left of its group is found one by one
        _kill_group_left(pid)
    with contextlib.suppress(ProcessLookupError):
        if alive(pid, marker):
            os.kill(pid, signal.SIGKILL)
    return True


def _kill_group_left(pgid: int) -> None:
    """SIGKILL what is left of the process group ``pgid`` once its leader has exited."""
    import psutil

    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if proc.info["pid"] != pgid and os.getpgid(proc.info["pid"]) == pgid:
                os.kill(proc.info["pid"], signal.SIGKILL)


@contextlib.contextmanager
def tracked(pid: int, marker: str) -> Iterator[None]:
    """While the block runs, ``pid`` (a session leader) is one of this process's running children.

    The block waits for it; if the wait is interrupted by an exception (Airflow's
    ``execution_timeout`` raises one in the task, and calls ``on_kill`` only after it has left
    this block), the group is stopped on the way out: it never outlives the task.
    """
    with _RUNNING_LOCK:
        _RUNNING[pid] = marker
    try:
        yield
    except BaseException:
        stop(pid, marker, first=signal.SIGINT)
        raise
    finally:
        with _RUNNING_LOCK:
            _RUNNING.pop(pid, None)


def stop_running(timeout: float = 10.0) -> list[int]:
    """Stop every tracked child group (SIGINT, then SIGKILL): what a killed task must not leave behind."""
    with _RUNNING_LOCK:
        running = dict(_RUNNING)
    return [pid for pid, marker in running.items() if stop(pid, marker, timeout, first=signal.SIGINT)]
