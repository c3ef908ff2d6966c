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
- ``stop_timeout_arg``: the argument (of ``command``'s ``args``) that bounds its graceful stop;
- on Ansible hosts: ``host_env``, its variables with the placeholders the role's supervisor
  fills in (``{scratch}``: the instance's own directory; ``{tmp}``: a short private one);
- on Kubernetes: its default ``image`` (None: the spec names one), the ``container_python``
  of that image, ``container_env`` (offline mode, caches on the scratch volume), the size of
  its scratch volume and whether it needs a ``/dev/shm`` (``shared_memory``).

The spec chooses one with ``serving.runtime`` (``model_server`` by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


class Runtime:
    """The base of every runtime; see the module docstring for what each declares."""

    name: ClassVar[str]
    protocol: ClassVar[str]
    ready_path: ClassVar[str]
    live_path: ClassVar[str]
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

    def served_digest(self, url: str, model: str, timeout: float = 2.0) -> str | None:
        """The digest of the artifact that answers at ``url``, or None when nothing answers for ``model``."""
        raise NotImplementedError

    def ready(self, url: str, model: str, digest: str, timeout: float = 10.0) -> str | None:
        """None when the server at ``url`` serves ``model`` from ``digest`` and answers; else why not."""
        raise NotImplementedError


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
