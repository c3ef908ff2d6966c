"""What guards the real ``python -m model_server``: the bearer token, the request limits, and 500s that
tell nothing but an id. Real processes on 127.0.0.1, real HTTP (httpx).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import joblib
import pytest

from model_server.__main__ import TOKEN_ENV, TokenError, build_parser, main, read_token
from model_server.app import Limits, json_depth
from model_server.manifest import MANIFEST_NAME, build_manifest, manifest_digest
from tests.unit.model_server.conftest import Processes, free_port, subprocess_env

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import Artifact

TOKEN = "tok-3f9a1c0e-never-in-a-log"
MODEL = "exploding"
SECRET = "the vault password is hunter2"
EXPLODING = f'''
import numpy as np


class Exploding:
    """A model whose predict fails, unexpectedly, on a row whose first feature is 666."""

    n_features_in_ = 4

    def predict(self, X):
        if (np.asarray(X)[:, 0] == 666).any():
            raise RuntimeError("{SECRET}")
        return np.zeros(len(X), dtype=np.int64)
'''
LIMITS = ["--max-body-bytes", str(1 << 20), "--max-rows", "50", "--max-json-depth", "8"]


class Server:
    """A started server: its process, base URL and log."""

    def __init__(self, processes: Processes, proc: Any, port: int) -> None:
        self.processes, self.proc, self.base = processes, proc, f"http://127.0.0.1:{port}"

    @property
    def log(self) -> str:
        return self.processes.output(self.proc)

    def hwm_kib(self) -> int:
        status = open(f"/proc/{self.proc.pid}/status").read()  # noqa: SIM115 - a one-shot read of /proc
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def _args(path: Path, digest: str, name: str, port: int, *extra: str) -> list[str]:
    return ["--artifact", str(path), "--digest", digest, "--model-name", name, "--model-version", "1",
            "--port", str(port), "--log-level", "warning", *extra]  # fmt: skip


def _body(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    shape = [len(rows), 4]
    return {"inputs": [{"name": "features", "datatype": "FP64", "shape": shape, "data": rows}], **extra}


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of a model that raises on one input, with a token (from the environment) and small limits."""
    root = tmp_path_factory.mktemp("guarded")
    (root / "code").mkdir()
    (root / "code" / "exploding_model.py").write_text(EXPLODING)
    sys.path.insert(0, str(root / "code"))
    try:
        from exploding_model import Exploding  # type: ignore[import-not-found]

        artifact = root / "artifact"
        artifact.mkdir()
        joblib.dump(Exploding(), artifact / "model.joblib")
    finally:
        sys.path.remove(str(root / "code"))
        sys.modules.pop("exploding_model", None)
    serving = {"name": MODEL, "flavor": "sklearn", "model_file": "model.joblib",
               "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}],
               "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}]}  # fmt: skip
    (artifact / "serving.json").write_text(json.dumps(serving))
    manifest = build_manifest(artifact)
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))
    env = subprocess_env()
    env["PYTHONPATH"] += os.pathsep + str(root / "code")
    env[TOKEN_ENV] = TOKEN
    processes, port = Processes(root), free_port()
    proc = processes.start("model_server", *_args(artifact, manifest_digest(manifest), MODEL, port, *LIMITS), env=env)
    try:
        processes.wait_http_ok(proc, f"http://127.0.0.1:{port}/v2/health/ready")
        yield Server(processes, proc, port)
    finally:
        processes.stop_all()


PROTECTED = [
    pytest.param("GET", "/v2", id="server-metadata"),
    pytest.param("GET", f"/v2/models/{MODEL}", id="model-metadata"),
    pytest.param("GET", f"/v2/models/{MODEL}/versions/1", id="version-metadata"),
    pytest.param("GET", f"/v2/models/{MODEL}/ready", id="model-ready"),
    pytest.param("POST", f"/v2/models/{MODEL}/infer", id="infer"),
    pytest.param("POST", f"/v2/models/{MODEL}/versions/1/infer", id="version-infer"),
    pytest.param("GET", "/no/such/path", id="unknown-path"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_endpoint_but_health_needs_the_token(guarded: Server, method: str, path: str) -> None:
    body = json.dumps(_body([[1.0, 2.0, 3.0, 4.0]])) if method == "POST" else None
    ask = {"method": method, "url": f"{guarded.base}{path}", "content": body, "timeout": 10}

    missing = httpx.request(**ask)
    wrong = httpx.request(**ask, headers={"Authorization": "Bearer not-the-token"})
    basic = httpx.request(**ask, headers={"Authorization": f"Basic {TOKEN}"})
    right = httpx.request(**ask, headers=AUTH)

    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="model-server"'
    for refused in (wrong, basic):
        assert refused.status_code == 401 and refused.json() == {"error": "invalid bearer token"}
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert right.status_code == (404 if path == "/no/such/path" else 200), right.text
    assert TOKEN not in guarded.log


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/metrics"])
def test_health_and_metrics_stay_open(guarded: Server, path: str) -> None:
    response = httpx.get(f"{guarded.base}{path}", timeout=10)

    assert response.status_code == 200
    assert response.headers["X-Model-Digest"].startswith("sha256:")


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    chunk = b" " * size
    for _ in range(total // size):
        yield chunk


LIMITED = [
    pytest.param({"content": b" " * ((1 << 20) + 1)}, 413, "--max-body-bytes", id="content-length"),
    pytest.param({"content": _chunks(4 << 20, 64 << 10)}, 413, "more than 1048576 bytes", id="chunked"),
    pytest.param({"json": _body([[1.0] * 4] * 51)}, 413, "inputs[0] has 51 rows; this server takes at most 50",
                 id="too-many-rows"),
    pytest.param({"content": json.dumps(_body([[1.0] * 4])).replace("[[1.0, 1.0, 1.0, 1.0]]", "[[[[[[[1]]]]]]]")},
                 400, "nests JSON 10 levels deep; this server accepts at most 8 (--max-json-depth)", id="too-deep"),
    pytest.param({"json": _body([[1.0, 2.0, 3.0]])}, 400, "inputs[0].data is nested as [1, 3]", id="field"),
]  # fmt: skip


@pytest.mark.parametrize(("request_kwargs", "status", "needle"), LIMITED)
def test_limits_answer_with_a_clear_error(
    guarded: Server, request_kwargs: dict[str, Any], status: int, needle: str
) -> None:
    response = httpx.post(f"{guarded.base}/v2/models/{MODEL}/infer", headers=AUTH, timeout=30, **request_kwargs)

    assert response.status_code == status, response.text
    assert needle in response.json()["error"]
    assert httpx.post(f"{guarded.base}/v2/models/{MODEL}/infer", json=_body([[1.0] * 4] * 50), headers=AUTH,
                      timeout=10).status_code == 200  # fmt: skip


def test_brackets_in_strings_do_not_count_as_nesting(guarded: Server) -> None:
    body = _body([[1.0] * 4], id='[[[[[[[[[[ \\" {{{{{{{{{{ "', parameters={"note": "]]]]]]]]"})
    response = httpx.post(f"{guarded.base}/v2/models/{MODEL}/infer", json=body, headers=AUTH, timeout=10)

    assert response.status_code == 200, response.text


def test_an_unexpected_error_is_a_generic_500_whose_id_is_in_the_log(guarded: Server) -> None:
    response = httpx.post(f"{guarded.base}/v2/models/{MODEL}/infer", json=_body([[666.0, 0.0, 0.0, 0.0]]),
                          headers=AUTH, timeout=10)  # fmt: skip

    assert response.status_code == 500
    doc = response.json()
    assert set(doc) == {"error", "id"} and doc["error"] == "internal error"
    assert re.fullmatch(r"[0-9a-f-]{36}", doc["id"])
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    deadline = time.monotonic() + 10
    while doc["id"] not in guarded.log and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = guarded.log[guarded.log.index(doc["id"]):]
    assert f"RuntimeError: {SECRET}" in logged  # the detail, under the same id, in the server's log only
    ok = httpx.post(f"{guarded.base}/v2/models/{MODEL}/infer", json=_body([[1.0] * 4]), headers=AUTH, timeout=10)
    assert ok.status_code == 200


@pytest.fixture(scope="module")
def filed(iris_artifact: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of iris with the default limits, its token from a 0600 file."""
    root = tmp_path_factory.mktemp("filed")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    processes, port = Processes(root), free_port()
    proc = processes.start("model_server", *_args(iris_artifact.path, iris_artifact.digest, "iris", port,
                                                  "--token-file", str(token_file)))  # fmt: skip
    try:
        processes.wait_http_ok(proc, f"http://127.0.0.1:{port}/v2/health/ready")
        yield Server(processes, proc, port)
    finally:
        processes.stop_all()


def test_a_1_gib_upload_is_cut_off_and_the_server_keeps_serving(filed: Server, iris_artifact: Artifact) -> None:
    infer = f"{filed.base}/v2/models/iris/infer"
    good = _body(iris_artifact.rows.tolist())
    assert httpx.post(infer, json=good, headers=AUTH, timeout=10).status_code == 200
    before = filed.hwm_kib()
    sent = 0

    def gigabyte() -> Iterator[bytes]:
        nonlocal sent
        for chunk in _chunks(1 << 30):
            sent += len(chunk)
            yield chunk

    for headers in ({}, {"Content-Length": str(1 << 30)}):  # chunked, then declared
        sent, started = 0, time.monotonic()
        response = httpx.post(infer, content=gigabyte(), headers={**AUTH, **headers}, timeout=60)
        took = time.monotonic() - started

        assert response.status_code == 413, response.text
        assert "at most 67108864 (--max-body-bytes)" in response.json()["error"]
        assert sent < 256 << 20, f"the client sent {sent >> 20} MiB before the server cut it off"
        assert took < 30
        assert httpx.post(infer, json=good, headers=AUTH, timeout=10).status_code == 200
    grown = filed.hwm_kib() - before
    assert grown < 256 << 10, f"the server's peak RSS grew by {grown >> 10} MiB"
    assert filed.proc.poll() is None


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        pytest.param(b"1", 0, id="scalar"),
        pytest.param(b"[]", 1, id="empty-list"),
        pytest.param(b'{"a": [[1], [2, [3]]]}', 4, id="nested"),
        pytest.param(b'["[[[[", "{{"]', 1, id="brackets-in-strings"),
        pytest.param(b'["\\"[[[", "\\\\", ["x"]]', 2, id="escapes"),
    ],
)
def test_json_depth(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


def test_token_from_a_private_file_never_on_the_command_line(filed: Server) -> None:
    url = f"{filed.base}/v2/models/iris"

    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers=AUTH, timeout=10).status_code == 200
    assert TOKEN not in open(f"/proc/{filed.proc.pid}/cmdline").read()  # noqa: SIM115
    assert "bearer token from file " in filed.log and TOKEN not in filed.log


def test_a_token_file_others_can_read_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)

    with pytest.raises(SystemExit) as exited:
        main(_args(tmp_path / "no-artifact", "sha256:" + "0" * 64, "iris", 1, "--token-file", str(token_file)))

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"chmod 600 {token_file}" in err and TOKEN not in err


@pytest.mark.parametrize(
    ("environ", "content", "mode", "expected"),
    [
        pytest.param({}, None, None, (None, "off"), id="none"),
        pytest.param({TOKEN_ENV: " t1 "}, None, None, ("t1", f"environment variable {TOKEN_ENV}"), id="env"),
        pytest.param({}, "t2\n", 0o600, ("t2", "file"), id="file"),
        pytest.param({TOKEN_ENV: ""}, None, None, "is set but empty", id="empty-env"),
        pytest.param({TOKEN_ENV: "t1"}, "t2", 0o600, "give one", id="both"),
        pytest.param({}, "t2", 0o640, "readable by others", id="group-readable"),
        pytest.param({}, "\n", 0o600, "is empty", id="empty-file"),
    ],
)
def test_read_token(
    tmp_path: Path, environ: dict[str, str], content: str | None, mode: int | None, expected: tuple[str, str] | str
) -> None:
    token_file = None
    if content is not None:
        token_file = tmp_path / "token"
        token_file.write_text(content)
        token_file.chmod(mode or 0o600)
    environ = dict(environ)
    if isinstance(expected, str):
        with pytest.raises(TokenError, match=expected):
            read_token(token_file, environ)
        return
    token, source = read_token(token_file, environ)
    assert token == expected[0] and source.startswith(expected[1])
    assert TOKEN_ENV not in environ  # what the server starts does not inherit it


def test_the_help_states_the_defaults_of_the_limits() -> None:
    text = " ".join(build_parser().format_help().split())
    limits = Limits()
    for flag, value in (("--max-body-bytes", limits.max_body_bytes), ("--max-rows", limits.max_rows),
                        ("--max-json-depth", limits.max_json_depth)):  # fmt: skip
        assert re.search(rf"{flag} \S+ .*?default: {value}\b", text), flag
