"""A host's runtime directory as the Ansible role installs it, and ``install-artifact`` run as the role runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SUPERVISOR = PROJECT / "include" / "ansible" / "roles" / "model_server" / "files" / "md_supervise.py"


def make_runtime(root: Path) -> Path:
    """``md_supervise.py`` beside the ``model_server`` package, in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(SUPERVISOR, root / "md_supervise.py")
    shutil.copytree(PROJECT / "include" / "serving" / "model_server", root / "model_server",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


def install_artifact(runtime: Path, incoming: Path, dest: Path, digest: str,
                     *extra: str) -> subprocess.CompletedProcess[str]:
    """``md_supervise.py install-artifact`` with a bare environment, as the role's task runs it on a host."""
    return subprocess.run(
        [sys.executable, str(runtime / "md_supervise.py"), "install-artifact", "--incoming", str(incoming),
         "--dest", str(dest), "--digest", digest, *extra],
        capture_output=True, text=True, timeout=300, check=False, env={"PATH": os.environ["PATH"]})
