"""Fixtures for the model_delivery unit tests: real builds of the demo model, a real file store,
real model-server processes (always stopped when the test ends).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from model_delivery.store import ArtifactStore
from tests.helpers.models import Built, build_and_store, free_port
from tests.helpers.processes import kill_matching, serving_env, stop_processes

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MODEL = "breast_cancer"
READY_DEADLINE = 60.0


@dataclass(frozen=True)
class Builds:
    store_root: str
    v1: Built  # model.yaml as shipped (C=1.0)
    v2: Built  # C=0.5: different weights, different digest

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.store_root)


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """Two real builds of breast_cancer (train.py run by run_build), stored with put_directory."""
    base = tmp_path_factory.mktemp("builds")
    root = f"file://{base}/store"
    store = ArtifactStore(root)
    v1 = build_and_store(base / "v1", store, None)
    v2 = build_and_store(base / "v2", store, {"C": 0.5})
    assert v1.digest != v2.digest
    return Builds(root, v1, v2)


class Servers:
    """Real ``python -m model_server`` processes; every one is stopped at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, artifact: Path, digest: str, *, version: str = "1") -> str:
        port = free_port()
        log = self.directory / f"server-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "model_server", "--artifact", str(artifact), "--digest", digest,
                 "--model-name", MODEL, "--model-version", version, "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=serving_env(),
            )  # fmt: skip
        self.started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_DEADLINE
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"model server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    return url
            time.sleep(0.1)
        pytest.fail(f"model server not ready within {READY_DEADLINE}s:\n{log.read_text(errors='replace')}")

    def stop_all(self) -> None:
        stop_processes(self.started)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The target's state directory; every process naming it is killed at teardown."""
    directory = tmp_path / "deploy" / MODEL
    try:
        yield directory
    finally:
        kill_matching(str(directory))
