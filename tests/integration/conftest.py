"""Fixtures the Ansible test files share: HAProxy installed, and the model server's wheels (once per worker)."""

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
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wheelhouse(tmp_path_factory.mktemp("wheels"))
