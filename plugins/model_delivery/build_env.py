"""The build environment, declared once and applied by every kind of build.

A process build, a Docker build and a KubernetesPodOperator build all start the same
launcher (``include/build/launch.py``) with the same declaration (:func:`declare`). The
launcher starts the entrypoint with exactly this environment, built from its own:

- ``pass``: the variables taken from the machine the build runs on, when set there. BLAS
  kernel selection (``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``) is among them: some
  machines need it, and it changes the floating-point results, so it is recorded too.
- ``set``: fixed values, the same everywhere: the thread counts of every BLAS/OpenMP
  runtime (``build.threads``, default 1), the seeds (``build.seed`` as ``PYTHONHASHSEED`` and
  ``MODEL_DELIVERY_SEED``), Python's flags, and the spec's own ``build.env``.

Nothing else reaches the entrypoint: no Airflow variables, connections or secrets, and no
store credentials of a build pod (the launcher keeps those for its upload).

The launcher then probes what the build ran on (Python, key library versions, the BLAS
libraries with their kernel and threads) into ``OUT/build_env.json``; the build stage puts it
in the release record and the report.

What is promised: the same declaration on the same kind of machine gives the same bytes.
Across machines whose BLAS picks another kernel, the bytes may differ, while the predictions
agree within floating-point tolerance; pin ``OPENBLAS_CORETYPE`` in ``build.env`` to get the
same kernel wherever the CPU supports it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from model_delivery.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from pathlib import Path

    from model_delivery.spec import BuildSpec

LAUNCHER = PROJECT_ROOT / "include" / "build" / "launch.py"
ENV_FILE = "build_env.json"

PASSTHROUGH = (
    "PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "HOME", "TMPDIR", "LD_LIBRARY_PATH",
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
)
"""Taken from the machine the build runs on, when set there (HOME and TMPDIR are each runner's scratch)."""

THREAD_VARS = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
)
"""Every BLAS and OpenMP runtime's thread count: all set to ``build.threads``."""

SEED_VARS = ("PYTHONHASHSEED", "MODEL_DELIVERY_SEED")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
"""A build downloads no model or data set from a hub (``build.env`` may say otherwise)."""

RESERVED = frozenset({"PATH", "HOME", "TMPDIR", "MODEL_DELIVERY_MODEL", *THREAD_VARS, *SEED_VARS})
"""Names ``build.env`` may not set: the runner owns them, or another spec field does."""

ENV_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,127}$"


def declare(model: str, build: BuildSpec) -> dict[str, Any]:
    """The build environment of one model: ``{"pass": [...], "set": {...}}`` (JSON, for the launcher)."""
    fixed = {name: str(build.threads) for name in THREAD_VARS}
    fixed.update({name: str(build.seed) for name in SEED_VARS})
    fixed.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", MODEL_DELIVERY_MODEL=model, **OFFLINE)
    fixed.update(build.env)
    return {"pass": list(PASSTHROUGH), "set": fixed}


def declare_default(model: str) -> dict[str, Any]:
    """The declaration of a model whose spec sets nothing of ``build`` (one thread, seed 0)."""
    from model_delivery.spec import BuildSpec

    return declare(model, BuildSpec.model_validate({}))


def sandbox_env(declared: dict[str, Any], scratch: Path) -> dict[str, str]:
    """The environment of a process that runs model code outside a build (evaluation): as the build's.

    The passed-through variables that are set here, then the fixed ones, with ``scratch`` as HOME
    and TMPDIR. No Airflow variable, connection or secret is among them.
    """
    env = {name: os.environ[name] for name in declared["pass"] if name in os.environ}
    env.update(declared["set"])
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(scratch), TMPDIR=str(scratch / "tmp"))
    return env


def summary(found: dict[str, Any] | None) -> str | None:
    """One line for the report: ``Python 3.11.7 (x86_64); numpy 2.4.6, ...; BLAS openblas 0.3.30 Haswell, 1 thread``."""
    if not found:
        return None
    python = found.get("python") or {}
    parts = [f"Python {python.get('version')} ({python.get('machine')})"]
    libraries = found.get("libraries") or {}
    if libraries:
        parts.append(", ".join(f"{name} {version}" for name, version in sorted(libraries.items())))
    blas = [f"{b.get('internal_api')} {b.get('version')} {b.get('architecture') or ''}".rstrip()
            + f", {b.get('num_threads')} thread{'s' if b.get('num_threads') != 1 else ''}"
            for b in found.get("blas") or []]
    parts.append("BLAS " + "; ".join(blas) if blas else "BLAS not loaded")
    return "; ".join(parts)


def build_tags(found: dict[str, Any] | None) -> dict[str, str]:
    """Registry tags of a version: what it was built on, so MLflow shows it beside the lineage."""
    if not found or "python" not in found:
        return {}
    tags = {"build.python": str(found["python"].get("version")), "build.machine": str(found["python"].get("machine"))}
    blas = (found.get("blas") or [{}])[0]
    if blas:
        tags["build.blas"] = f"{blas.get('internal_api')} {blas.get('version')} {blas.get('architecture')}"
        tags["build.threads"] = str(blas.get("num_threads"))
    return tags
