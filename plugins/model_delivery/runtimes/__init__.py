"""Serving runtimes: what runs a model server, declared once per runtime.

A runtime is one module here and one line in :data:`RUNTIMES`. It declares:

- ``command``: how a server of one artifact is launched (the local target, the Kubernetes
  manifests and the Ansible role's supervisor all launch from it);
- ``ready_path``, ``live_path`` and ``metrics_path``: the HTTP paths of probes and metrics;
- ``check_artifact``: what the runtime accepts to serve (verified against its digest first);
- ``ready``: readiness that tells the truth (the expected model, from the expected artifact,
  able to answer), and ``served_digest``: which artifact answers at an address;
- ``protocol``: what the smoke test speaks to it (``open-inference`` or ``openai``);
- ``drain_signals``: whether it understands the drain signals of the local target;
- ``token_env``: the variable its server reads a bearer token from (None: it cannot require one), and
  ``pass_env``: the variables of its own taken from the machine, on top of :data:`SERVER_ENV`
  (:func:`server_env` builds a server's whole environment from them: nothing else is inherited);
- ``stop_timeout_arg``: the argument (of ``command``'s ``args``) that bounds its graceful stop;
- on Ansible hosts: ``host_env``, its variables with the placeholders the role's supervisor
  fills in (``{scratch}``: the instance's own directory; ``{tmp}``: a short private one);
- on Kubernetes: its default ``image`` (None: the spec names one), the ``container_python``
  of that image, ``container_env`` (offline mode, caches on the scratch volume), the size of
  its scratch volume and whether it needs a ``/dev/shm`` (``shared_memory``).

The spec chooses one with ``serving.runtime`` (``model_server`` by default).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

SERVER_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "LD_LIBRARY_PATH", "OMP_*", "KMP_*", "MKL_*", "OPENBLAS_*", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_*", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
)
"""What a model server (and the local target's front) takes from the environment of the worker that starts it:
names, or ``fnmatch`` patterns. Nothing else is inherited: no Airflow connections or variables, no cloud or store
credentials. A runtime adds its own (``Runtime.pass_env``); its fixed variables and the token are set on top."""


class Runtime:
    """The base of every runtime; see the module docstring for what each declares."""

    name: ClassVar[str]
    protocol: ClassVar[str]
    ready_path: ClassVar[str]
    live_path: ClassVar[str]
    ready_needs_token: ClassVar[bool] = False  # its ready path is behind the bearer token (probes cannot send it)
    metrics_path: ClassVar[str]
    drain_signals: ClassVar[bool] = False
    default_ready_timeout: ClassVar[float] = 120.0
    image: ClassVar[str | None] = None
    container_python: ClassVar[str] = "python"
    scratch_size: ClassVar[str] = "256Mi"
    shared_memory: ClassVar[str | None] = None
    """Size of a memory-backed ``/dev/shm`` the server's processes share, or None when it needs none."""
    stop_timeout_arg: ClassVar[str | None] = None
    """The ``args`` key of the seconds in-flight requests get when the server stops, or None when it has none."""
    token_env: ClassVar[str | None] = None
    """The variable the server reads a bearer token from (never an argument: ``ps`` shows those), or None when
    it cannot require one."""
    pass_env: ClassVar[tuple[str, ...]] = ()
    """The runtime's own variables taken from the worker's environment, on top of :data:`SERVER_ENV`."""

    def container_env(self, scratch: str) -> dict[str, str]:
        """Variables of the server's container, caches under ``scratch`` (its writable volume)."""
        return {}

    def host_env(self) -> dict[str, str]:
        """Variables of the server on an Ansible host, under ``{scratch}`` (filled in by the role's supervisor)."""
        return self.container_env("{scratch}")

    def python(self) -> str:
        """The interpreter that runs this runtime's server on this machine."""
        import sys

        return sys.executable

    def command(self, *, python: str, artifact: str, digest: str, model: str, version: str, host: str, port: int,
                args: Mapping[str, Any]) -> list[str]:
        """The server's command line (a list: never a shell string)."""
        raise NotImplementedError

    def env(self, scratch: Path) -> dict[str, str]:
        """Variables the server needs on top of its environment (caches, offline mode), under ``scratch``."""
        return {}

    def check_artifact(self, artifact_dir: Path, digest: str) -> None:
        """Refuse an artifact this runtime must not serve (``TamperedArtifact`` or ``DeployFailed``)."""

    def check_files(self, paths: list[str], digest: str) -> None:
        """Refuse, from its file list alone (a manifest), an artifact this runtime must not serve."""

    def served_digest(self, url: str, model: str, timeout: float = 2.0, *, token: str | None = None) -> str | None:
        """The digest of the artifact that answers at ``url``, or None when nothing answers for ``model``.

        :param token: the servers' bearer token, when they require one.
        """
        raise NotImplementedError

    def ready(self, url: str, model: str, digest: str, timeout: float = 10.0, *,
              token: str | None = None) -> str | None:
        """None when the server at ``url`` serves ``model`` from ``digest`` and answers; else why not."""
        raise NotImplementedError


def server_env(environ: Mapping[str, str], *, runtime: Runtime | None = None, fixed: Mapping[str, str] | None = None,
               pythonpath: str | None = None, token: str | None = None) -> dict[str, str]:
    """The whole environment of a server: the allowed variables of ``environ``, then ``fixed``, then the token.

    :param environ: the worker's environment (``os.environ``).
    :param runtime: the server's runtime (its ``pass_env`` and ``token_env``); None for the front.
    :param fixed: variables set whatever the worker has (the runtime's ``env``: caches, offline mode).
    :param pythonpath: ``PYTHONPATH``, as we set it (the worker's own is not passed).
    :param token: the bearer token, set in ``runtime.token_env``.
    :raises ValueError: a token for a runtime that cannot require one.
    """
    allowed: Iterable[str] = (*SERVER_ENV, *(runtime.pass_env if runtime else ()))
    token_env = runtime.token_env if runtime else None
    env = {name: value for name, value in environ.items()
           if name != token_env and any(fnmatchcase(name, pattern) for pattern in allowed)}
    env.update(fixed or {})
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if token is not None:
        if token_env is None:
            raise ValueError(f"the {runtime.name if runtime else 'front'} server cannot require a bearer token: "
                             "unset serving.token_conn_id, or serve with a runtime that can")
        env[token_env] = token
    return env


def cli_args(args: Mapping[str, Any]) -> list[str]:
    """``{"max_model_len": 256, "enforce_eager": True}`` -> ``["--max-model-len", "256", "--enforce-eager"]``."""
    out: list[str] = []
    for key, value in sorted(args.items()):
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False and value is not None:
            out += [flag, str(value)]
    return out


RUNTIMES = {
    "model_server": "model_delivery.runtimes.model_server:ModelServerRuntime",
    "vllm": "model_delivery.runtimes.vllm:VllmRuntime",
}
"""The runtimes a spec can name (``serving.runtime``): one line each, imported only when used."""


def get_runtime(name: str) -> Runtime:
    """The runtime a spec names."""
    import importlib

    if name not in RUNTIMES:
        raise ValueError(f"unknown serving runtime {name!r}: choose from {sorted(RUNTIMES)}")
    module, _, cls = RUNTIMES[name].partition(":")
    runtime: Runtime = getattr(importlib.import_module(module), cls)()
    return runtime
