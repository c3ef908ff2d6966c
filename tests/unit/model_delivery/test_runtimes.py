"""Serving runtimes: commands built from data, and what the vllm runtime refuses to serve (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_delivery.exceptions import DeployFailed, TamperedArtifact
from model_delivery.runtimes import RUNTIMES, cli_args, get_runtime
from model_delivery.store import ArtifactStore


def test_every_runtime_in_the_registry_declares_its_unit() -> None:
    for name in RUNTIMES:
        runtime = get_runtime(name)
        assert runtime.name == name
        assert runtime.protocol in ("open-inference", "openai")
        assert all(path.startswith("/") for path in (runtime.ready_path, runtime.live_path, runtime.metrics_path))
    with pytest.raises(ValueError, match="unknown serving runtime 'triton'"):
        get_runtime("triton")


def test_runtime_args_become_flags_without_a_shell() -> None:
    assert cli_args({"max_model_len": 256, "enforce_eager": True, "trust_remote_code": False, "dtype": "a b"}) == [
        "--dtype", "a b", "--enforce-eager", "--max-model-len", "256"]
    command = get_runtime("vllm").command(python="/venv/bin/python", artifact="/models/abc", digest="sha256:abc",
                                          model="code_lm", version="3", host="127.0.0.1", port=8001,
                                          args={"max_model_len": 256, "enforce_eager": True})
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--model") + 1] == "/models/abc"
    assert command[command.index("--served-model-name") + 1] == "code_lm"
    assert command[command.index("--max-model-len") + 1] == "256" and "--enforce-eager" in command
    assert command[command.index("--kv-cache-memory-bytes") + 1] == "1G"  # always sized: unset, vLLM takes 90 %
    ours = get_runtime("model_server").command(python="py", artifact="/a", digest="sha256:abc", model="m",
                                               version="1", host="0.0.0.0", port=8080, args={})
    assert ours == ["py", "-m", "model_server", "--artifact", "/a", "--digest", "sha256:abc", "--model-name", "m",
                    "--model-version", "1", "--host", "0.0.0.0", "--port", "8080"]


def _hf_artifact(tmp_path: Path, extra: dict[str, bytes]) -> tuple[Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (src / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (src / "serving.json").write_text("{}")
    for name, data in extra.items():
        (src / name).write_bytes(data)
    store = ArtifactStore(f"file://{tmp_path}/store")
    artifact = store.put_directory("lm", src)
    return store.fetch("lm", artifact.digest, tmp_path / "fetched"), artifact.digest


def test_vllm_serves_a_verified_safetensors_directory(tmp_path: Path) -> None:
    directory, digest = _hf_artifact(tmp_path, {})
    get_runtime("vllm").check_artifact(directory, digest)  # no exception


@pytest.mark.parametrize("name", ["pytorch_model.bin", "optimizer.pt", "tokenizer.pkl"])
def test_vllm_refuses_an_artifact_with_a_pickle(tmp_path: Path, name: str) -> None:
    directory, digest = _hf_artifact(tmp_path, {name: b"\x80\x04."})
    with pytest.raises(TamperedArtifact, match=rf"pickle files \['{name}'\]"):
        get_runtime("vllm").check_artifact(directory, digest)


def test_vllm_refuses_a_tampered_or_incomplete_artifact(tmp_path: Path) -> None:
    directory, digest = _hf_artifact(tmp_path, {})
    (directory / "model.safetensors").write_bytes(b"changed after it was verified")
    with pytest.raises(TamperedArtifact, match="the vllm runtime refuses"):
        get_runtime("vllm").check_artifact(directory, digest)
    (tmp_path / "bare").mkdir()
    bare, bare_digest = _hf_artifact(tmp_path / "bare", {})
    (bare / "config.json").unlink()
    with pytest.raises((DeployFailed, TamperedArtifact)):
        get_runtime("vllm").check_artifact(bare, bare_digest)


def test_vllm_sockets_fit_a_unix_socket_path_however_deep_the_state_directory(tmp_path: Path) -> None:
    """vLLM binds ``ipc://$TMPDIR/<uuid4>``: a TMPDIR under a deep state directory failed the engine at start."""
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 6) / "runtime"
    env = get_runtime("vllm").env(deep)
    socket = Path(env["TMPDIR"]) / "a8df1698-7595-4cc0-9d8d-74c78e4c5a07"
    assert len(str(socket).encode()) <= 107
    assert Path(env["TMPDIR"]).is_dir() and (Path(env["TMPDIR"]).stat().st_mode & 0o777) == 0o700
    assert env["TMPDIR"] == get_runtime("vllm").env(deep)["TMPDIR"]  # one per state directory
    assert env["TMPDIR"] != get_runtime("vllm").env(tmp_path / "other")["TMPDIR"]
    assert env["VLLM_CACHE_ROOT"].startswith(str(deep))
    # Servers that share a machine (blue-green) share its cores: unbound OpenMP threads; a pod keeps vLLM's binding.
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in get_runtime("vllm").container_env("/scratch")


WORKER_ENV = {"PATH": "/usr/bin", "HOME": "/home/airflow", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "2",
              "PYTHONPATH": "/opt/airflow/plugins", "AIRFLOW_CONN_WAREHOUSE": "postgresql://u:hunter2@db/x",
              "AWS_SECRET_ACCESS_KEY": "hunter2", "MODEL_SERVER_TOKEN": "stale", "VLLM_API_KEY": "stale",
              "VLLM_CPU_KVCACHE_SPACE": "4", "HF_TOKEN": "hunter2"}  # fmt: skip


@pytest.mark.parametrize(
    ("runtime", "token", "expected"),
    [
        pytest.param("model_server", None, {"PATH", "HOME", "LC_ALL", "OMP_NUM_THREADS", "PYTHONPATH"}, id="ours"),
        pytest.param("model_server", "t", {"PATH", "HOME", "LC_ALL", "OMP_NUM_THREADS", "PYTHONPATH",
                                           "MODEL_SERVER_TOKEN"}, id="ours-with-token"),
        pytest.param("vllm", "t", {"PATH", "HOME", "LC_ALL", "OMP_NUM_THREADS", "PYTHONPATH", "VLLM_CPU_KVCACHE_SPACE",
                                   "VLLM_API_KEY", "HF_HUB_OFFLINE"}, id="vllm-with-token"),
        pytest.param(None, None, {"PATH", "HOME", "LC_ALL", "OMP_NUM_THREADS", "PYTHONPATH"}, id="front"),
    ],
)  # fmt: skip
def test_server_env_takes_only_the_allow_list_from_the_worker(
    runtime: str | None, token: str | None, expected: set[str]
) -> None:
    from model_delivery.runtimes import server_env

    chosen = get_runtime(runtime) if runtime else None
    fixed = {"HF_HUB_OFFLINE": "1"} if runtime == "vllm" else {}

    env = server_env(WORKER_ENV, runtime=chosen, fixed=fixed, pythonpath="/srv/serving", token=token)

    assert set(env) == expected
    assert env["PYTHONPATH"] == "/srv/serving"  # ours, not the worker's
    assert "hunter2" not in "".join(env.values()) and "stale" not in "".join(env.values())
    if token:
        assert chosen is not None and env[str(chosen.token_env)] == token


def test_a_token_for_a_server_that_cannot_take_one_is_refused() -> None:
    from model_delivery.runtimes import server_env

    with pytest.raises(ValueError, match="cannot require a bearer token"):
        server_env(WORKER_ENV, runtime=None, token="t")
