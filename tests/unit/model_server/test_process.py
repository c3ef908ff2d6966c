"""The real ``python -m model_server`` process: serves over HTTP, stops on SIGTERM, and refuses
to start (exit code 3, port never bound) when the artifact does not match its digest.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from model_server.front import write_state

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import Artifact, Processes

EXIT_TIMEOUT = 60


def _server_args(artifact: Path, digest: str, port: int, name: str = "iris") -> list[str]:
    return [
        "--artifact", str(artifact), "--digest", digest, "--model-name", name, "--model-version", "3",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip


def _infer(base: str, rows: np.ndarray) -> httpx.Response:
    body = {"id": "p1", "inputs": [{"name": "features", "datatype": "FP64", "shape": list(rows.shape),
                                    "data": rows.ravel().tolist()}]}  # fmt: skip
    return httpx.post(f"{base}/v2/models/iris/infer", json=body, timeout=30)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test keeps bound and listening: a process binding it would fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_real_server_serves_inference_and_stops_on_sigterm(
    iris_artifact: Artifact, processes: Processes, new_port: Callable[[], int], tmp_path: Path
) -> None:
    port = new_port()
    server = processes.start("model_server", *_server_args(iris_artifact.path, iris_artifact.digest, port))
    base = f"http://127.0.0.1:{port}"
    processes.wait_http_ok(server, f"{base}/v2/health/ready")

    response = _infer(base, iris_artifact.rows)
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Digest"] == iris_artifact.digest
    assert response.headers["X-Model-Version"] == "3"
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["predict"]["data"] == iris_artifact.estimator.predict(iris_artifact.rows).tolist()
    np.testing.assert_allclose(
        np.reshape(outputs["predict_proba"]["data"], (3, 3)),
        iris_artifact.estimator.predict_proba(iris_artifact.rows),
    )
    bad = httpx.post(f"{base}/v2/models/iris/infer", content=b"{oops", timeout=30)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert f'digest="{iris_artifact.digest}"' in metrics
    assert 'model_server_requests_total{endpoint="/v2/models/{name}/infer",status_code="400"} 1.0' in metrics

    # The same server behind the real front proxy answers identically.
    front_port = new_port()
    state = tmp_path / "front.json"
    write_state(state, "127.0.0.1", port, color="blue")
    front = processes.start("model_server.front", "--port", str(front_port), "--state", str(state))
    processes.wait_listening(front, front_port)
    via_front = _infer(f"http://127.0.0.1:{front_port}", iris_artifact.rows)
    assert via_front.status_code == 200, via_front.text
    assert via_front.json()["outputs"] == response.json()["outputs"]

    server.terminate()
    assert server.wait(timeout=EXIT_TIMEOUT) == 0, processes.output(server)
    assert "stopped (SIGTERM)" in processes.output(server)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_artifact_exits_3_without_binding(
    iris_artifact: Artifact,
    artifact_copy: Callable[[Artifact], Path],
    processes: Processes,
    held_port: int,
) -> None:
    # The port is held by this test, so a server that tried to bind it would fail with
    # "address already in use" and exit 1 (see the control test below), not 3.
    directory = artifact_copy(iris_artifact)
    _flip_byte(directory / "model.joblib")
    proc = processes.start("model_server", *_server_args(directory, iris_artifact.digest, held_port))
    code = proc.wait(timeout=EXIT_TIMEOUT)
    output = processes.output(proc)
    assert code == 3, output
    assert "refusing to start" in output and "model.joblib: sha256" in output
    assert "address already in use" not in output.lower()
    assert "Uvicorn running" not in output


def test_control_an_intact_artifact_does_try_to_bind_the_held_port(
    iris_artifact: Artifact, processes: Processes, held_port: int
) -> None:
    proc = processes.start("model_server", *_server_args(iris_artifact.path, iris_artifact.digest, held_port))
    code = proc.wait(timeout=EXIT_TIMEOUT)
    output = processes.output(proc)
    assert code == 1, output
    assert "address already in use" in output.lower()
    assert "could not start serving" in output


@pytest.mark.parametrize(
    ("case", "expected_code", "needle"),
    [
        pytest.param("wrong-name", 4, "declares model 'iris' but --model-name is 'wine'", id="wrong-name"),
        pytest.param("other-digest", 3, "expected sha256:", id="other-artifacts-digest"),
        pytest.param("malformed-digest", 2, "sha256:<64 lowercase hex digits>", id="malformed-digest"),
        pytest.param("missing-dir", 3, "MANIFEST.json is missing", id="missing-artifact"),
    ],
)
def test_refuses_to_start(
    iris_artifact: Artifact,
    binary_artifact: Artifact,
    processes: Processes,
    held_port: int,
    tmp_path: Path,
    case: str,
    expected_code: int,
    needle: str,
) -> None:
    directory, digest, name = iris_artifact.path, iris_artifact.digest, "iris"
    if case == "wrong-name":
        name = "wine"
    elif case == "other-digest":
        digest = binary_artifact.digest
    elif case == "malformed-digest":
        digest = "sha256:1234"
    else:
        directory = tmp_path / "nothing-here"
    proc = processes.start("model_server", *_server_args(directory, digest, held_port, name))
    code = proc.wait(timeout=EXIT_TIMEOUT)
    output = processes.output(proc)
    assert code == expected_code, output
    assert needle in output
    assert "address already in use" not in output.lower()
