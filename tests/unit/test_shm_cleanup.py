"""The vLLM tests' clean-up of /dev/shm removes only what a killed vLLM left behind.

Test files run in parallel: a segment another test's server holds (the team stack's PostgreSQL
lost its dynamic shared memory this way, and its scheduler stalled) must survive the clean-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers.lm import remove_new_shm, shm_segments

SHM = Path("/dev/shm")


@pytest.mark.skipif(not SHM.is_dir(), reason="this machine has no /dev/shm")
def test_only_segments_no_live_process_holds_are_removed() -> None:
    before = shm_segments()
    tag = uuid.uuid4().hex[:12]
    held, left, postgres = SHM / f"mdt-held-{tag}", SHM / f"mdt-left-{tag}", SHM / f"PostgreSQL.{int(tag, 16) % 10**9}"
    for path in (held, left, postgres):
        path.write_bytes(b"\0" * 4096)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nf = open(sys.argv[1], 'rb')\n"
                               "print('open', flush=True)\ntime.sleep(60)", str(held)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        remove_new_shm(before)
        assert held.exists(), "a segment a live process holds was removed"
        assert postgres.exists(), "a PostgreSQL segment was removed"
        assert not left.exists(), "a segment nobody holds was left behind"
    finally:
        holder.kill()
        holder.wait()
        for path in (held, left, postgres):
            if path.exists():
                os.unlink(path)
