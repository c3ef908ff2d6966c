"""scripts/stop-servers.sh stops the servers local deploys started from its checkout, and only those.

It runs from a copy of the script in a temporary "checkout" whose ``.venv/bin`` links to this
interpreter, so it can never touch a server of the real checkout (or of another test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.models import PROJECT, free_port
from tests.helpers.processes import gone, kill_matching, serving_env


def _front(python: Path, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(python), "-m", "model_server.front", "--host", "127.0.0.1", "--port",
                             str(free_port()), "--state", str(state)], env=serving_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_stops_servers_started_as_python_or_python3_from_this_checkout_only(tmp_path: Path) -> None:
    checkout, other = tmp_path / "checkout", tmp_path / "other"
    for root in (checkout, other):
        (root / ".venv" / "bin").mkdir(parents=True)
        for name in ("python", "python3"):
            os.symlink(sys.executable, root / ".venv" / "bin" / name)
    (checkout / "scripts").mkdir()
    shutil.copy(PROJECT / "scripts" / "stop-servers.sh", checkout / "scripts" / "stop-servers.sh")
    mine = [_front(checkout / ".venv" / "bin" / name, tmp_path / f"{name}.json") for name in ("python", "python3")]
    theirs = _front(other / ".venv" / "bin" / "python3", tmp_path / "other.json")
    try:
        time.sleep(0.5)
        assert all(p.poll() is None for p in [*mine, theirs])

        result = subprocess.run(["bash", str(checkout / "scripts" / "stop-servers.sh")], capture_output=True,
                                text=True, timeout=60)

        assert result.stdout.strip() == "stopped model servers", result.stdout + result.stderr
        for proc in mine:
            proc.wait(timeout=30)
        assert all(gone(p.pid) for p in mine)
        assert theirs.poll() is None  # another checkout's server is left alone
        again = subprocess.run(["bash", str(checkout / "scripts" / "stop-servers.sh")], capture_output=True,
                               text=True, timeout=60)
        assert again.stdout.strip() == "no model servers running"
    finally:
        kill_matching(str(tmp_path))
