"""Copies of the project's model specs for tests: isolated folders, free ports, editable."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_models(dest: Path, names: tuple[str, ...] = ("breast_cancer", "wine")) -> Path:
    """Copy model folders into ``dest`` and give each a free front port."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(PROJECT / "include" / "models" / name, dest / name)
        edit_spec(dest / name, lambda spec: spec["deploy"]["local"].update(port=free_port()))
    return dest


def edit_spec(model_dir: Path, change: Any) -> dict[str, Any]:
    """Load model.yaml, let ``change(spec)`` edit it in place, write it back."""
    path = model_dir / "model.yaml"
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec
