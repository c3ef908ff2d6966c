"""Process helpers for tests that start real servers: environment, liveness, cleanup by marker."""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import TYPE_CHECKING

import psutil

from tests.helpers.models import PROJECT

if TYPE_CHECKING:
    from collections.abc import Iterable

SERVING_ROOT = PROJECT / "include" / "serving"


def serving_env() -> dict[str, str]:
    """The environment for a child process, with ``model_server`` importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SERVING_ROOT), env.get("PYTHONPATH")) if p)
    return env


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_matching(marker: str) -> list[int]:
    """Kill every process whose command line contains ``marker`` and wait for it; return the pids."""
    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or []):
                proc.kill()
                victims.append(proc)
    psutil.wait_procs(victims, timeout=10)
    return [p.pid for p in victims]


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """Terminate each process still running, then kill it if it has not exited within ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
