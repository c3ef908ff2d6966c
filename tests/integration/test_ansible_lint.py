"""ansible-lint (the pinned one in the venv) is clean on include/ansible: playbooks, the role, its modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.models import PROJECT

pytestmark = pytest.mark.integration


def test_ansible_lint_is_clean_on_include_ansible(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")]),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([str(venv_bin / "ansible-lint"), "--offline", "include/ansible"], cwd=PROJECT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "0 failure(s), 0 warning(s)" in result.stdout + result.stderr
