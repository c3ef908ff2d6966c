"""run_build with real entrypoints: the demo wine build, a clean environment, failures, timeouts."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.build import git_sha, run_build
from model_delivery.exceptions import BuildFailed
from model_delivery.spec import load_spec
from tests.helpers.models import copy_models, edit_spec
from tests.helpers.processes import gone

if TYPE_CHECKING:
    from pathlib import Path

WAIT = 60.0


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file and directory under ``folder`` with its content hash ("dir" for directories)."""
    return {
        p.relative_to(folder).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def _model_with_entrypoint(tmp_path: Path, script: str, **build: Any) -> Path:
    """A copy of the wine model whose build runs ``script`` (saved as custom.py)."""
    model_dir = copy_models(tmp_path / "models", ("wine",)) / "wine"
    (model_dir / "custom.py").write_text(script)
    edit_spec(model_dir, lambda spec: spec["build"].update(entrypoint="custom.py", **build))
    return model_dir


WRITE_OUTPUTS = '''
def write_outputs(out, model=True, train=True, evaluation=True):
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    if model:
        (out / "model" / "serving.json").write_text("{}")
    if train:
        (out / "data" / "train.csv").write_text("a,target\\n1,0\\n")
    if evaluation:
        (out / "data" / "eval.csv").write_text("a,target\\n1,0\\n")
'''

PARSE_ARGS = '''
import argparse, json, os, sys
from pathlib import Path
parser = argparse.ArgumentParser()
parser.add_argument("--output-dir", type=Path, required=True)
parser.add_argument("--params", default="{}")
args = parser.parse_args()
out = args.output_dir
'''


def test_run_build_of_the_wine_demo(tmp_path: Path) -> None:
    model_dir = copy_models(tmp_path / "models", ("wine",)) / "wine"
    before = _snapshot(model_dir)
    lines: list[str] = []

    outputs = run_build(load_spec(model_dir), model_dir, tmp_path / "scratch", log=lines.append)

    assert (outputs.model_dir / "serving.json").is_file()
    assert (outputs.model_dir / "model.joblib").is_file()
    assert json.loads((outputs.model_dir / "serving.json").read_text())["name"] == "wine"
    assert set(outputs.data) == {"train", "eval"}
    assert outputs.data["train"].name == "train.csv" and outputs.data["eval"].name == "eval.csv"
    assert all(path.is_file() and path.stat().st_size > 0 for path in outputs.data.values())
    assert outputs.work_dir.parent == tmp_path / "scratch" / "wine"
    assert outputs.model_dir == outputs.work_dir / "out" / "model"
    assert any("trained on" in line for line in lines), lines
    assert _snapshot(model_dir) == before


def test_the_build_gets_a_clean_environment_and_cannot_write_the_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    monkeypatch.setenv("MODEL_DELIVERY_TRACKING_URI", "sqlite:////secret/mlflow.db")
    script = PARSE_ARGS + WRITE_OUTPUTS + '''
write_outputs(out)
(out / "model" / "env.json").write_text(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(),
                                                    "params": json.loads(args.params)}))
(Path(__file__).parent / "scribble.txt").write_text("the build wrote beside its entrypoint")
Path("scribble-in-cwd.txt").write_text("and into its working directory")
print("dumped", len(os.environ), "variables")
'''
    model_dir = _model_with_entrypoint(tmp_path, script, params={"alpha": 0.5})
    before = _snapshot(model_dir)

    outputs = run_build(load_spec(model_dir), model_dir, tmp_path / "scratch", log=lambda line: None)

    dumped = json.loads((outputs.model_dir / "env.json").read_text())
    env = dumped["env"]
    for secret in ("AIRFLOW_CONN_SECRET", "AWS_SECRET_ACCESS_KEY", "MODEL_DELIVERY_TRACKING_URI", "AIRFLOW_HOME"):
        assert secret not in env
    assert not [key for key, value in env.items() if "hunter" in value or "/secret/" in value]
    work_dir = outputs.work_dir
    assert env["HOME"] == str(work_dir)
    assert env["TMPDIR"].startswith(str(work_dir) + os.sep)
    assert dumped["cwd"] == str(work_dir)
    assert env["MODEL_DELIVERY_MODEL"] == "wine"
    assert env["PATH"] == os.environ["PATH"]
    assert dumped["params"] == {"alpha": 0.5}
    assert _snapshot(model_dir) == before
    assert (work_dir / "src" / "scribble.txt").is_file()


def test_a_failing_entrypoint_reports_its_exit_code_and_last_lines(tmp_path: Path) -> None:
    script = 'import sys\nfor i in range(40):\n    print(f"line {i}")\nsys.exit(3)\n'
    model_dir = _model_with_entrypoint(tmp_path, script)
    lines: list[str] = []

    with pytest.raises(BuildFailed) as caught:
        run_build(load_spec(model_dir), model_dir, tmp_path / "scratch", log=lines.append)

    message = str(caught.value)
    assert "custom.py" in message and "exited with code 3" in message
    assert message.splitlines()[-30:] == [f"line {i}" for i in range(10, 40)]
    assert "line 9" not in message.splitlines()
    assert lines == [f"line {i}" for i in range(40)]


def test_a_build_that_exceeds_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    script = PARSE_ARGS + '''
import subprocess, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
(out / "pids.json").write_text(json.dumps([os.getpid(), child.pid]))
print("sleeping", flush=True)
time.sleep(300)
'''
    model_dir = _model_with_entrypoint(tmp_path, script, timeout_seconds=1)
    scratch = tmp_path / "scratch"

    with pytest.raises(BuildFailed, match=r"build\.timeout_seconds=1") as caught:
        run_build(load_spec(model_dir), model_dir, scratch, log=lambda line: None)

    assert "killed" in str(caught.value)
    (pids_file,) = scratch.glob("wine/*/out/pids.json")
    pids = json.loads(pids_file.read_text())
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not all(gone(pid) for pid in pids):
        time.sleep(0.05)
    assert [gone(pid) for pid in pids] == [True, True]


@pytest.mark.parametrize(
    ("call", "missing"),
    [
        pytest.param("pass", ["model/serving.json", "data/train.csv", "data/eval.csv"], id="writes-nothing"),
        pytest.param("write_outputs(out, model=False)", ["model/serving.json"], id="no-serving-json"),
        pytest.param("write_outputs(out, evaluation=False)", ["data/eval.csv"], id="no-eval-data"),
        pytest.param("write_outputs(out, train=False, evaluation=False)", ["data/train.csv", "data/eval.csv"],
                     id="no-data"),
    ],
)
def test_missing_outputs_are_named(tmp_path: Path, call: str, missing: list[str]) -> None:
    model_dir = _model_with_entrypoint(tmp_path, PARSE_ARGS + WRITE_OUTPUTS + call + "\n")

    with pytest.raises(BuildFailed) as caught:
        run_build(load_spec(model_dir), model_dir, tmp_path / "scratch", log=lambda line: None)

    message = str(caught.value)
    assert f"did not write {', '.join(missing)} under --output-dir" in message
    for name in {"model/serving.json", "data/train.csv", "data/eval.csv"} - set(missing):
        assert name not in message


def test_git_sha_outside_a_repository_is_unknown(tmp_path: Path) -> None:
    assert git_sha(tmp_path) == "unknown"
