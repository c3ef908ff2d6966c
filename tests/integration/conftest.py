"""Fixtures the Ansible test files share: HAProxy installed, and the model server's wheels (once per run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.helpers.ansible_fleet import ensure_debian_packages, wheelhouse

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="session")
def haproxy_installed() -> None:
    try:
        ensure_debian_packages({"haproxy": "haproxy"})
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """Downloaded by the first worker that asks, under a lock the others wait on; the rest reuse it."""
    from filelock import FileLock

    from tests.conftest import run_root

    root = run_root(tmp_path_factory, worker_id)
    with FileLock(root / "wheels.lock"):
        return wheelhouse(root / "wheels")
