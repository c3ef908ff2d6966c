"""Run a model's build entrypoint as its own process in an isolated working directory.

The contract with the entrypoint (``include/models/<name>/train.py`` by default)::

    python train.py --output-dir OUT --params '{"n_estimators": 200}'

It must write ``OUT/model/`` (the artifact; ``serving.json`` plus the model files) and the
data it trained and should be evaluated on: ``OUT/data/train.csv`` or ``OUT/data/train.parquet``,
and ``OUT/data/eval.csv`` or ``OUT/data/eval.parquet`` (exactly one file per data set; the
release records which format each is, and later stages read that format). It runs in a fresh
directory holding a copy of the model folder, through the same launcher as a container build
(``include/build/launch.py``), in the environment that ``model_delivery.build_env`` declares:
no Airflow variables, connections or secrets reach it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model_delivery.build_env import ENV_FILE, LAUNCHER, PASSTHROUGH, declare
from model_delivery.exceptions import BuildFailed, ReleaseFailed
from model_delivery.procs import tracked

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from model_delivery.spec import ModelSpec

DATA_SETS = ("train", "eval")
"""The data sets a build writes under ``OUT/data/``: ``<name><suffix>`` in one of :data:`DATA_FORMATS`."""
DATA_FORMATS = {"csv": ".csv", "parquet": ".parquet"}
"""The formats a data set may be written in, with their file suffix."""
LEGACY_FORMAT = "csv"
"""The format of a data record written before formats were recorded (the contract allowed only CSV then)."""


def data_format(path: Path) -> str:
    """The format of a data file the build contract accepts, by its suffix (``csv`` or ``parquet``).

    :raises ValueError: for any other suffix.
    """
    for name, suffix in DATA_FORMATS.items():
        if path.suffix == suffix:
            return name
    raise ValueError(f"{path.name}: a data set is {' or '.join(DATA_FORMATS.values())}")


def recorded_format(entry: dict[str, Any], what: str) -> str:
    """The format a stored data record names (``{"uri", "sha256", "format"}``), checked.

    :param entry: one data set's record from the build's result.
    :param what: the data set's name in messages.
    :raises ReleaseFailed: when the record names a format the stages cannot read.
    """
    found = str(entry.get("format") or LEGACY_FORMAT)
    if found not in DATA_FORMATS:
        raise ReleaseFailed(f"the {what} data record names format {found!r} ({entry.get('uri')}); the stages read "
                          f"{' and '.join(DATA_FORMATS)}. Fix: rebuild the model (trigger the release again).")
    return found


def _data_files(out: Path) -> tuple[dict[str, Path], list[str]]:
    """Each data set's one file under ``out/data``, and what is wrong (a set with no file, or more than one)."""
    found: dict[str, Path] = {}
    problems: list[str] = []
    for name in DATA_SETS:
        names = [f"data/{name}{suffix}" for suffix in DATA_FORMATS.values()]
        present = [rel for rel in names if (out / rel).is_file()]
        if len(present) == 1:
            found[name] = out / present[0]
        elif present:
            problems.append(f"wrote both {' and '.join(present)} (a data set is written in exactly one format: "
                            "keep one of them)")
        else:
            problems.append(f"wrote neither {' nor '.join(names)}")
    return found, problems


@dataclass(frozen=True)
class BuildOutputs:
    """Where a finished build left its outputs (local paths)."""

    work_dir: Path
    model_dir: Path
    data: dict[str, Path]
    environment: dict[str, Any] = field(default_factory=dict)
    """What the build ran on (``build_env.json`` from the launcher's probe)."""


def _launcher_env(work_dir: Path) -> dict[str, str]:
    """The launcher's own environment: the passed-through variables, with this build's scratch as HOME and TMPDIR."""
    env = {key: os.environ[key] for key in PASSTHROUGH if key in os.environ}
    tmp = work_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(work_dir), TMPDIR=str(tmp))
    return env


def _stream(pipe: object, log: Callable[[str], None], tail: deque[str]) -> None:
    for line in iter(pipe.readline, ""):  # type: ignore[attr-defined]
        line = line.rstrip("\n")
        if not line.startswith("launch: "):  # the launcher's own lines are logged, not quoted in errors
            tail.append(line)
        log(line)


def run_build(
    spec: ModelSpec, model_dir: Path, scratch: Path, *, log: Callable[[str], None] = print
) -> BuildOutputs:
    """Run the spec's entrypoint and check its outputs.

    :param spec: the model spec.
    :param model_dir: the model folder (copied; the build never writes into it).
    :param scratch: parent of the fresh working directory.
    :param log: receives each line the build prints.
    :raises BuildFailed: on a non-zero exit, a timeout, or missing outputs.
    """
    work_dir = scratch / spec.name / uuid.uuid4().hex
    src = work_dir / "src"
    shutil.copytree(model_dir, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = work_dir / "out"
    out.mkdir()
    cmd = [sys.executable, str(LAUNCHER), "--model-dir", str(src), "--entrypoint", spec.build.entrypoint,
           "--params", json.dumps(spec.build.params, sort_keys=True), "--output-dir", str(out),
           "--env", json.dumps(declare(spec.name, spec.build), sort_keys=True), "--cwd", str(work_dir)]
    tail: deque[str] = deque(maxlen=30)
    proc = subprocess.Popen(
        cmd,
        cwd=work_dir,
        env=_launcher_env(work_dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    reader = threading.Thread(target=_stream, args=(proc.stdout, log, tail), daemon=True)
    reader.start()
    try:
        with tracked(proc.pid, str(LAUNCHER)):  # the operator's on_kill stops it and its group
            code = proc.wait(timeout=spec.build.timeout_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # tracked has stopped it on the way out
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise BuildFailed(
            f"build of {spec.name!r} exceeded build.timeout_seconds={spec.build.timeout_seconds} and was killed. "
            "Fix: make the build faster or raise the timeout in model.yaml."
        ) from None
    finally:
        reader.join(timeout=10)
    if code != 0:
        raise BuildFailed(
            f"build entrypoint {spec.build.entrypoint} of {spec.name!r} exited with code {code}. "
            "Last lines:\n" + "\n".join(tail)
        )
    return _check_outputs(spec, work_dir, out)


def _check_outputs(spec: ModelSpec, work_dir: Path, out: Path) -> BuildOutputs:
    model = out / "model"
    missing = [] if (model / "serving.json").is_file() else ["model/serving.json"]
    data, problems = _data_files(out)
    if missing or problems:
        wrong = [f"did not write {', '.join(missing)}"] if missing else []
        raise BuildFailed(
            f"build entrypoint {spec.build.entrypoint} of {spec.name!r} finished but " + "; ".join(wrong + problems)
            + " under --output-dir. Fix the entrypoint: see the contract in docs/model-spec.md."
        )
    env_file = out / ENV_FILE
    environment = json.loads(env_file.read_text()) if env_file.is_file() else {}
    return BuildOutputs(work_dir, model, data, environment)


def _serving_problem(spec: ModelSpec, config: dict[str, Any], golden: list[Any]) -> str | None:
    """What in an open-inference ``serving.json`` does not fit the spec (its evaluation and its golden requests)."""
    (declared,) = config["inputs"]
    outputs = [o["name"] for o in config["outputs"]]
    if not declared.get("columns"):
        return ("field 'inputs[0].columns' is missing: evaluation selects the model's features from the evaluation "
                "data by these names")
    width = declared["shape"][1]
    for index, case in enumerate(golden):
        for sent in case.inputs:
            name, shape = sent.get("name"), sent.get("shape")
            if name != declared["name"]:
                return (f"field 'inputs[0].name' is {declared['name']!r}, but golden case {index} "
                        f"({_cut(case.name)}) sends input {_cut(name)}")
            if width >= 0 and isinstance(shape, list) and shape and shape[-1] != width:
                return (f"field 'inputs[0].shape' declares {width} features, but golden case {index} "
                        f"({_cut(case.name)}) sends shape {_cut(shape)}")
        if case.expect.output not in outputs:
            return (f"field 'outputs' declares {outputs}, but golden case {index} ({_cut(case.name)}) checks output "
                    f"{_cut(case.expect.output)}")
    needed = ["predict"] + (["predict_proba"] if {"roc_auc", "log_loss"} & set(spec.evaluation.metrics) else [])
    missing = [name for name in needed if name not in outputs]
    if missing:
        return (f"field 'outputs' declares {outputs}, but evaluation.metrics {spec.evaluation.metrics} need "
                f"{missing}")
    return None


def _cut(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_serving(spec: ModelSpec, artifact_dir: Path, model_dir: Path) -> dict[str, Any]:
    """Check the ``serving.json`` a build wrote against the spec, before anything is stored.

    Its ``name`` must be the spec's. For a runtime that speaks the Open Inference Protocol it must also be valid
    for the model server (``model_server.flavors.read_serving_config``), declare the columns evaluation needs,
    accept the inputs the golden requests send, and declare every output they check and the metrics need.

    :param artifact_dir: the build's ``model/`` directory.
    :param model_dir: the model folder (its golden file).
    :return: the serving config.
    :raises BuildFailed: naming the field of ``serving.json`` and the fix (no retries: a rebuild writes the same).
    """
    from model_delivery.runtimes import get_runtime
    from model_delivery.spec import check_golden
    from model_server.flavors import SERVING_FILE, ServingConfigError, read_serving_config

    path = artifact_dir / SERVING_FILE

    def refuse(problem: str) -> BuildFailed:
        return BuildFailed(f"build entrypoint {spec.build.entrypoint} of {spec.name!r} wrote a {SERVING_FILE} that "
                           f"does not fit the spec: {problem}. Fix the entrypoint so that model/{SERVING_FILE} "
                           "matches model.yaml (the build contract in docs/model-spec.md).")

    if get_runtime(spec.serving.runtime).protocol != "open-inference":
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise refuse(f"it is not valid JSON ({_cut(str(exc), 200)})") from None
        if not isinstance(config, dict):
            raise refuse(f"it must hold a JSON object, not {type(config).__name__}")
    else:
        try:
            config = read_serving_config(artifact_dir)
        except ServingConfigError as exc:
            raise refuse(_cut(str(exc).removeprefix(f"{path}: "), 300)) from None
    if config.get("name") != spec.name:
        raise refuse(f"field 'name' is {_cut(config.get('name'))}, not the spec's name {spec.name!r}")
    if get_runtime(spec.serving.runtime).protocol == "open-inference":
        problem = _serving_problem(spec, config, check_golden(spec, model_dir))
        if problem:
            raise refuse(problem)
    return config


def git_sha(repo: Path) -> str:
    """The commit of the project checkout, with ``-dirty`` when it has changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
