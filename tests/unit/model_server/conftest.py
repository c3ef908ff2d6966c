"""Fixtures for the model server tests: tiny real scikit-learn models written as real artifacts,
and real processes (started with the ``model_server`` package on ``PYTHONPATH``, always stopped).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import joblib
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model_server.manifest import MANIFEST_NAME, build_manifest, manifest_digest
from tests.helpers.processes import stop_processes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np

SERVING_ROOT = Path(__file__).resolve().parents[3] / "include" / "serving"
STARTUP_DEADLINE = 60.0


@dataclass(frozen=True)
class Artifact:
    """An artifact directory written by a fixture, with its digest and a few rows to predict."""

    path: Path
    digest: str
    name: str
    rows: np.ndarray

    @property
    def estimator(self) -> Any:
        return joblib.load(self.path / "model.joblib")


def write_artifact(directory: Path, estimator: Any, serving: dict[str, Any]) -> str:
    """Write model, ``serving.json`` and ``MANIFEST.json`` into ``directory``; return the digest."""
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, directory / serving["model_file"])
    (directory / "serving.json").write_text(json.dumps(serving, indent=2))
    manifest = build_manifest(directory)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest_digest(manifest)


def _classifier_serving(name: str, columns: list[str], labels: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "flavor": "sklearn",
        "model_file": "model.joblib",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, len(columns)], "columns": columns}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(labels)]},
        ],
        "labels": labels,
    }


@pytest.fixture(scope="session")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """A 3-class LogisticRegression on iris (4 features)."""
    data = load_iris()
    model = LogisticRegression(max_iter=1000).fit(data.data, data.target)
    serving = _classifier_serving("iris", list(data.feature_names), list(data.target_names))
    path = tmp_path_factory.mktemp("artifacts") / "iris"
    return Artifact(path, write_artifact(path, model, serving), "iris", data.data[[0, 60, 120]])


@pytest.fixture(scope="session")
def binary_artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """A binary scaled LogisticRegression on breast cancer (30 features)."""
    data = load_breast_cancer()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(data.data, data.target)
    serving = _classifier_serving("breast_cancer", list(data.feature_names), list(data.target_names))
    path = tmp_path_factory.mktemp("artifacts") / "breast_cancer"
    return Artifact(path, write_artifact(path, model, serving), "breast_cancer", data.data[:5])


@pytest.fixture(scope="session")
def regressor_artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """A LinearRegression on diabetes (10 features), with only a ``predict`` output."""
    data = load_diabetes()
    model = LinearRegression().fit(data.data, data.target)
    serving = {
        "name": "diabetes",
        "flavor": "sklearn",
        "model_file": "model.joblib",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 10]}],
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
    }
    path = tmp_path_factory.mktemp("artifacts") / "diabetes"
    return Artifact(path, write_artifact(path, model, serving), "diabetes", data.data[:4])


@pytest.fixture
def artifact_copy(tmp_path: Path) -> Callable[[Artifact], Path]:
    """Copy an artifact into this test's own directory, so that the test may tamper with it."""

    def copy(artifact: Artifact) -> Path:
        return Path(shutil.copytree(artifact.path, tmp_path / f"copy-{artifact.name}"))

    return copy


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env() -> dict[str, str]:
    """The environment for child processes, with ``model_server`` importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SERVING_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Processes:
    """Starts real processes with output in files; stops every one of them at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``python -m module args`` with ``env`` (default: :func:`subprocess_env`)."""
        log = self.directory / f"{module}-{len(self.started)}.stderr"
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env=subprocess_env() if env is None else env,
                cwd=self.directory,
            )
        self.started.append((proc, log))
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        """Everything the process wrote so far (stdout and stderr together)."""
        return next(log for p, log in self.started if p is proc).read_text(errors="replace")

    def wait_http_ok(self, proc: subprocess.Popen[bytes], url: str) -> None:
        """Poll ``url`` until it answers 200; fail if the process dies or the deadline passes."""
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"process exited with {proc.returncode} before {url} was up:\n{self.output(proc)}"
                )
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"{url} not up within {STARTUP_DEADLINE}s:\n{self.output(proc)}")

    def wait_listening(self, proc: subprocess.Popen[bytes], port: int) -> None:
        """Poll until 127.0.0.1:port accepts TCP connections."""
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"process exited with {proc.returncode} before listening:\n{self.output(proc)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"port {port} not listening within {STARTUP_DEADLINE}s:\n{self.output(proc)}")

    def stop_all(self) -> None:
        stop_processes(proc for proc, _ in self.started)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start real processes; all are terminated (then killed if need be) when the test ends."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def new_port() -> Callable[[], int]:
    """Return a function giving a free TCP port on 127.0.0.1 each time it is called."""
    return free_port


@pytest.fixture
def make_artifact(tmp_path: Path) -> Callable[..., str]:
    """Return :func:`write_artifact` (``(directory, estimator, serving) -> digest``)."""
    return write_artifact


@pytest.fixture
def child_env() -> dict[str, str]:
    """The environment for a child process, with ``model_server`` on ``PYTHONPATH``."""
    return subprocess_env()


@contextmanager
def serving_threads(servers: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Serve each of ``servers`` (socketserver servers) on a thread of its own; shut them down at exit."""
    threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=10)
