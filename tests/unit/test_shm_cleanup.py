"""The vLLM tests' clean-up of /dev/shm removes only what the server they killed held.

Test files run in parallel. Two earlier clean-ups removed what other tests' processes held: the
team stack's PostgreSQL lost its dynamic shared memory (its scheduler stalled), and a vLLM starting
on another worker lost a named semaphore (``sem.mp-…``, mapped under glibc's temporary name, so a
scan by name took it for unused), and its engine core failed to start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers.lm import SHM, kill_session

HOLD = """
import mmap, multiprocessing, os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # like a vLLM that does not stop: the SIGKILL path
semaphore = multiprocessing.get_context("spawn").Semaphore(1)  # /dev/shm/sem.mp-..., mapped as sem.XXXXXX (deleted)
with open(sys.argv[1], "r+b") as f:
    mapped = mmap.mmap(f.fileno(), 4096)
print(semaphore._semlock.name, flush=True)
time.sleep(120)
"""

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="this machine has no /dev/shm")


def _holder(segment: Path, session: bool) -> tuple[subprocess.Popen[str], Path]:
    segment.write_bytes(b"\0" * 4096)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(segment)], stdout=subprocess.PIPE, text=True,
                            start_new_session=session)
    assert proc.stdout is not None
    name = proc.stdout.readline().strip()
    assert name.startswith("/mp-"), name
    return proc, SHM / f"sem.{name[1:]}"


def test_a_killed_session_loses_its_segments_and_no_other_process_loses_one() -> None:
    tag = uuid.uuid4().hex[:12]
    other, other_sem = _holder(SHM / f"mdt-other-{tag}", session=False)  # another test's server
    killed, killed_sem = _holder(SHM / f"mdt-killed-{tag}", session=True)  # the vLLM a fixture stops
    unheld = SHM / f"mdt-unheld-{tag}"  # created meanwhile by someone else, held by nobody yet
    unheld.write_bytes(b"\0" * 4096)
    try:
        assert other_sem.exists() and killed_sem.exists()
        kill_session(killed.pid, timeout=1)
        assert killed.wait(timeout=30) is not None
        assert not (SHM / f"mdt-killed-{tag}").exists(), "a segment the killed session held was left behind"
        assert not killed_sem.exists(), "a semaphore the killed session held was left behind"
        assert (SHM / f"mdt-other-{tag}").exists(), "a segment a live process holds was removed"
        assert other_sem.exists(), "a named semaphore a live process holds was removed"
        assert unheld.exists(), "a segment the killed session never held was removed"
    finally:
        for proc in (other, killed):
            proc.kill()
            proc.wait()
        for path in SHM.glob(f"mdt-*-{tag}"):
            os.unlink(path)
        for path in (other_sem, killed_sem):
            if path.exists():
                os.unlink(path)
