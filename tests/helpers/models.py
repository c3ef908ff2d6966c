"""Copies of the project's model specs for tests: isolated folders, free ports, editable."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from model_delivery.store import ArtifactStore

PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_models(dest: Path, names: tuple[str, ...] = ("breast_cancer", "wine")) -> Path:
    """Copy model folders into ``dest`` and give each a free front port, one no other model in ``dest`` claims
    (the build refuses two specs on one port)."""
    dest.mkdir(parents=True, exist_ok=True)
    claimed = {_local_port(path) for path in dest.glob("*/model.yaml")}
    for name in names:
        shutil.copytree(PROJECT / "include" / "models" / name, dest / name)
        port = free_port()
        while port in claimed:
            port = free_port()
        claimed.add(port)
        edit_spec(dest / name, lambda spec, port=port: spec["deploy"]["local"].update(port=port))
    return dest


def _local_port(path: Path) -> Any:
    """The ``deploy.local.port`` a model.yaml claims, or None (a broken spec claims nothing)."""
    try:
        return yaml.safe_load(path.read_text())["deploy"]["local"]["port"]
    except (yaml.YAMLError, KeyError, TypeError):
        return None


def edit_spec(model_dir: Path, change: Any) -> dict[str, Any]:
    """Load model.yaml, let ``change(spec)`` edit it in place, write it back."""
    path = model_dir / "model.yaml"
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


@dataclass(frozen=True)
class Built:
    """One real build of a demo model, stored in an artifact store."""

    digest: str
    model_dir: Path  # the build's local output (no MANIFEST)
    eval_csv: Path
    train_csv: Path


def build_and_store(base: Path, store: ArtifactStore, params: dict[str, float] | None,
                    model: str = "breast_cancer") -> Built:
    """Build ``model`` for real (its train.py run by run_build) with ``params`` over its spec's, and store it."""
    from model_delivery.build import run_build
    from model_delivery.spec import load_spec

    model_dir = copy_models(base / "models", (model,)) / model
    if params:
        edit_spec(model_dir, lambda spec: spec["build"]["params"].update(params))
    outputs = run_build(load_spec(model_dir), model_dir, base / "scratch", log=lambda line: None)
    stored = store.put_directory(model, outputs.model_dir)
    return Built(stored.digest, outputs.model_dir, outputs.data["eval"], outputs.data["train"])
