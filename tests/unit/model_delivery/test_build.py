"""run_build with real entrypoints: the demo wine build, a clean environment, failures, timeouts."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from model_delivery.build import git_sha, run_build
from model_delivery.exceptions import BuildFailed
from model_delivery.spec import load_spec
from tests.helpers.models import copy_models, edit_spec
from tests.helpers.processes import gone

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
def write_outputs(out, model=True, train="csv", evaluation="csv"):
    """Each data set in the formats named ("csv", "parquet", "csv parquet"; False: none)."""
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    if model:
        (out / "model" / "serving.json").write_text("{}")
    for name, formats in (("train", train), ("eval", evaluation)):
        for fmt in (formats or "").split():
            if fmt == "csv":
                (out / "data" / f"{name}.csv").write_text("a,target\\n1,0\\n")
            else:
                import pyarrow as pa, pyarrow.parquet as pq
                pq.write_table(pa.table({"a": [1], "target": [0]}), out / "data" / f"{name}.parquet")
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
    launcher = [line for line in lines if line.startswith("launch: ")]
    assert [line for line in lines if line not in launcher] == [f"line {i}" for i in range(40)]
    assert "custom.py --output-dir" in launcher[0] and "exited with code 3" in launcher[-1]


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


NEITHER = "wrote neither data/{0}.csv nor data/{0}.parquet"
BOTH = "wrote both data/{0}.csv and data/{0}.parquet (a data set is written in exactly one format: keep one of them)"


@pytest.mark.parametrize(
    ("call", "problems"),
    [
        pytest.param("pass", ["did not write model/serving.json", NEITHER.format("train"), NEITHER.format("eval")],
                     id="writes-nothing"),
        pytest.param("write_outputs(out, model=False)", ["did not write model/serving.json"], id="no-serving-json"),
        pytest.param("write_outputs(out, evaluation=False)", [NEITHER.format("eval")], id="no-eval-data"),
        pytest.param("write_outputs(out, train=False, evaluation=False)", [NEITHER.format("train"),
                     NEITHER.format("eval")], id="no-data"),
        pytest.param("write_outputs(out, train=False, evaluation='parquet csv')",
                     [NEITHER.format("train"), BOTH.format("eval")], id="no-train-both-eval"),
    ],
)
def test_missing_or_ambiguous_outputs_are_named(tmp_path: Path, call: str, problems: list[str]) -> None:
    model_dir = _model_with_entrypoint(tmp_path, PARSE_ARGS + WRITE_OUTPUTS + call + "\n")

    with pytest.raises(BuildFailed) as caught:
        run_build(load_spec(model_dir), model_dir, tmp_path / "scratch", log=lambda line: None)

    message = str(caught.value)
    assert f"finished but {'; '.join(problems)} under --output-dir. Fix the entrypoint" in message, message


def test_parquet_data_is_accepted_in_place_of_csv_per_data_set(tmp_path: Path) -> None:
    from model_delivery.build import data_format

    model_dir = _model_with_entrypoint(
        tmp_path, PARSE_ARGS + WRITE_OUTPUTS + "write_outputs(out, train='parquet', evaluation='csv')\n")

    outputs = run_build(load_spec(model_dir), model_dir, tmp_path / "scratch", log=lambda line: None)

    data_dir = outputs.work_dir / "out" / "data"
    assert outputs.data == {"train": data_dir / "train.parquet", "eval": data_dir / "eval.csv"}
    assert {name: data_format(path) for name, path in outputs.data.items()} == {"train": "parquet", "eval": "csv"}


def test_git_sha_outside_a_repository_is_unknown(tmp_path: Path) -> None:
    assert git_sha(tmp_path) == "unknown"


def test_the_entrypoint_gets_exactly_the_declared_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_delivery.build_env import OFFLINE, PASSTHROUGH, THREAD_VARS

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # machine settings that BLAS needs are passed through
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    monkeypatch.setenv("OMP_NUM_THREADS", "64")  # the worker's own thread count is not
    monkeypatch.setenv("AIRFLOW_CONN_SECRET", "hunter2")
    script = PARSE_ARGS + WRITE_OUTPUTS + '''
write_outputs(out)
(out / "model" / "env.json").write_text(json.dumps(dict(os.environ)))
'''
    model_dir = _model_with_entrypoint(tmp_path, script, threads=2, seed=11,
                                       env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})

    outputs = run_build(load_spec(model_dir), model_dir, tmp_path / "scratch", log=lambda line: None)

    env = json.loads((outputs.model_dir / "env.json").read_text())
    assert {name: env[name] for name in THREAD_VARS} == dict.fromkeys(THREAD_VARS, "2")
    assert env["PYTHONHASHSEED"] == env["MODEL_DELIVERY_SEED"] == "11"
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["OPENBLAS_L2_SIZE"] == "512"
    fixed = {*THREAD_VARS, "PYTHONHASHSEED", "MODEL_DELIVERY_SEED", "CUBLAS_WORKSPACE_CONFIG", "MODEL_DELIVERY_MODEL",
             "PYTHONNOUSERSITE", "PYTHONDONTWRITEBYTECODE", *OFFLINE}
    assert env["HF_HUB_OFFLINE"] == "1"
    assert set(env) - fixed <= set(PASSTHROUGH), set(env) - fixed - set(PASSTHROUGH)
    # the probe saw the same environment, and records it with what the build ran on
    found = outputs.environment
    assert found["env"]["OMP_NUM_THREADS"] == "2" and found["env"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert found["python"]["version"] == platform.python_version()
    assert found["libraries"]["numpy"] == importlib.metadata.version("numpy")
    assert found["blas"] and {b["num_threads"] for b in found["blas"]} == {min(2, os.cpu_count() or 1)}


@pytest.mark.parametrize(("env", "message"), [
    pytest.param({"OMP_NUM_THREADS": "8"}, "set by the build runner: use build.threads", id="threads"),
    pytest.param({"PYTHONHASHSEED": "1"}, "set by the build runner", id="seed"),
    pytest.param({"lower-case": "1"}, "is not an environment variable name", id="name"),
])
def test_build_env_refuses_what_the_runner_owns(tmp_path: Path, env: dict[str, str], message: str) -> None:
    from model_delivery.exceptions import InvalidModelSpec

    model_dir = copy_models(tmp_path / "models", ("wine",)) / "wine"
    edit_spec(model_dir, lambda spec: spec["build"].update(env=env))
    with pytest.raises(InvalidModelSpec, match="build.env") as caught:
        load_spec(model_dir)
    assert message in str(caught.value)


X86_AVX2 = platform.machine() == "x86_64" and " avx2" in Path("/proc/cpuinfo").read_text()


@pytest.mark.skipif(not X86_AVX2, reason="the OpenBLAS kernels named here (Haswell, Prescott) need an x86_64 CPU "
                                         "with AVX2")
def test_a_different_blas_kernel_may_change_the_bytes_not_the_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is promised across machines: the same predictions within tolerance, and the same bytes for a pinned kernel.

    Bitwise equality is not promised when the machine's BLAS picks another kernel (OpenBLAS chooses by CPU, or
    by OPENBLAS_CORETYPE): the kernels sum in other orders. ``build.env`` pins the kernel where that matters.
    """
    import joblib
    import pandas as pd

    from model_server.manifest import build_manifest, manifest_digest

    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    pinned_dir = copy_models(tmp_path / "pinned", ("breast_cancer",)) / "breast_cancer"
    edit_spec(pinned_dir, lambda spec: spec["build"].update(env={"OPENBLAS_CORETYPE": "Haswell"}))
    built = {}
    for name, machine_kernel, folder in (("haswell", "Haswell", model_dir), ("prescott", "Prescott", model_dir),
                                         ("pinned", "Prescott", pinned_dir)):
        monkeypatch.setenv("OPENBLAS_CORETYPE", machine_kernel)
        built[name] = run_build(load_spec(folder), folder, tmp_path / name, log=lambda line: None)

    kernels = {name: {b["architecture"] for b in out.environment["blas"]} for name, out in built.items()}
    assert kernels["haswell"] != kernels["prescott"], kernels  # the record tells the kernels apart
    assert kernels["pinned"] == kernels["haswell"]
    digests = {name: manifest_digest(build_manifest(out.model_dir)) for name, out in built.items()}
    assert digests["pinned"] == digests["haswell"]  # a pinned kernel: the same bytes on a machine that picks another

    frame = pd.read_csv(built["haswell"].data["eval"])
    features = frame.drop(columns=["target", "size_group"]).to_numpy()
    models = {name: joblib.load(out.model_dir / "model.joblib") for name, out in built.items()}
    assert (models["haswell"].predict(features) == models["prescott"].predict(features)).all()
    assert abs(models["haswell"].predict_proba(features) - models["prescott"].predict_proba(features)).max() < 1e-9


def _serving(**change: Any) -> dict[str, Any]:
    """The serving.json breast_cancer's train.py writes, with ``change`` applied."""
    columns = [f"feature {i}" for i in range(30)]
    serving = {"name": "breast_cancer", "flavor": "sklearn", "model_file": "model.joblib",
               "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 30], "columns": columns}],
               "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]},
                           {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}]}
    return {**serving, **change}


INPUT = _serving()["inputs"][0]
PREDICT, PROBA = _serving()["outputs"]

BAD_SERVING = [
    pytest.param(_serving(name="wine"), "field 'name' is 'wine', not the spec's name 'breast_cancer'", id="name"),
    pytest.param({k: v for k, v in _serving().items() if k != "inputs"}, "field 'inputs' is missing",
                 id="no-inputs"),
    pytest.param(_serving(inputs=[{**INPUT, "name": "x"}]),
                 "field 'inputs[0].name' is 'x', but golden case 0 ('a clear example of class 0 (malignant)') "
                 "sends input 'features'", id="input-name"),
    pytest.param(_serving(inputs=[{**INPUT, "shape": [-1, 29], "columns": INPUT["columns"][:29]}]),
                 "field 'inputs[0].shape' declares 29 features, but golden case 0", id="input-width"),
    pytest.param(_serving(inputs=[{k: v for k, v in INPUT.items() if k != "columns"}]),
                 "field 'inputs[0].columns' is missing", id="no-columns"),
    pytest.param(_serving(outputs=[PREDICT]),
                 "field 'outputs' declares ['predict'], but golden case 2", id="output-a-golden-case-checks"),
    pytest.param(_serving(outputs=[{**PREDICT, "datatype": "FLOAT"}]), "field 'outputs[0].datatype' is 'FLOAT'",
                 id="output-datatype"),
]


@pytest.mark.parametrize(("serving", "detail"), BAD_SERVING)
def test_a_serving_json_that_does_not_fit_the_spec_fails_the_build_naming_the_field(
    tmp_path: Path, serving: dict[str, Any], detail: str
) -> None:
    from model_delivery.build import check_serving

    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    artifact = tmp_path / "out" / "model"
    artifact.mkdir(parents=True)
    (artifact / "serving.json").write_text(json.dumps(_serving()))
    assert check_serving(load_spec(model_dir), artifact, model_dir)["name"] == "breast_cancer"
    (artifact / "serving.json").write_text(json.dumps(serving))

    with pytest.raises(BuildFailed) as caught:
        check_serving(load_spec(model_dir), artifact, model_dir)

    message = str(caught.value)
    assert message.startswith("build entrypoint train.py of 'breast_cancer' wrote a serving.json that does not fit "
                              "the spec: "), message
    assert detail in message and "Fix the entrypoint" in message
    assert len(message) < 1000


def test_metrics_that_need_predict_proba_need_it_in_serving_json(tmp_path: Path) -> None:
    from model_delivery.build import check_serving

    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    golden = json.loads((model_dir / "golden.json").read_text())
    (model_dir / "golden.json").write_text(json.dumps([c for c in golden if c["expect"]["output"] == "predict"]))
    artifact = tmp_path / "model"
    artifact.mkdir()
    (artifact / "serving.json").write_text(json.dumps(_serving(outputs=[PREDICT])))
    with pytest.raises(BuildFailed, match=r"evaluation.metrics \['accuracy', 'f1', 'roc_auc', 'log_loss'\] need "
                                          r"\['predict_proba'\]"):
        check_serving(load_spec(model_dir), artifact, model_dir)


def test_a_language_models_serving_json_must_name_the_model(tmp_path: Path) -> None:
    from model_delivery.build import check_serving

    model_dir = copy_models(tmp_path / "models", ("code_lm",)) / "code_lm"
    artifact = tmp_path / "model"
    artifact.mkdir()
    (artifact / "serving.json").write_text(json.dumps({"name": "code_lm", "flavor": "transformers"}))
    check_serving(load_spec(model_dir), artifact, model_dir)
    (artifact / "serving.json").write_text(json.dumps({"name": "wine", "flavor": "transformers"}))
    with pytest.raises(BuildFailed, match="field 'name' is 'wine', not the spec's name 'code_lm'"):
        check_serving(load_spec(model_dir), artifact, model_dir)
