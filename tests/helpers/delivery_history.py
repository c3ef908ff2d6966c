"""One real delivery history, shared by the metrics DAG tests and the "Model releases" page tests.

A copy of the demo model under its own name (so its DAG runs are its own in the session's
Airflow DB) is released five times with ``dag.test()``: a first release, a gate rejection,
a smoke failure that rolls back, a fixed release, and a manual ``model_rollback``. Then the
``delivery_metrics`` DAG runs, reading Airflow's metadata through a real api-server's REST
API. The api-server keeps running for the page tests; the environment is restored as soon
as the history is built. Test modules use it with ``pytest_plugins``, so it is built once.

PYTEST_DONT_REWRITE: the test modules import their constants from here before pytest loads it as a plugin.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.store import ArtifactStore
from tests.helpers.api_server import ApiServer, api_server
from tests.helpers.models import edit_spec
from tests.helpers.processes import kill_matching
from tests.helpers.release import get_dag, load_record, release_env, run_release

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "bc_metrics"
THRESHOLDS = {"accuracy": {"min": 0.93}, "roc_auc": {"min": 0.97}, "log_loss": {"max": 0.25}}
STRICT = {"thresholds": THRESHOLDS,
          "no_regression": {"accuracy": {"tolerance": 0.01}, "log_loss": {"tolerance": 0.2, "relative": True}}}
LOOSE = {"thresholds": THRESHOLDS, "no_regression": {"accuracy": {"tolerance": 0.05}}}
MODEL_TEST = '''"""The build code's own test: the data has both size groups."""
import train


def test_the_frame_has_both_size_groups():
    _, frame = train.load_frame()
    assert set(frame["size_group"]) == {"small", "large"}
'''
PROJECT_COVERAGE = {"meta": {"timestamp": "2026-11-26T12:00:00"},
                    "totals": {"covered_lines": 3, "num_statements": 4, "percent_covered": 75.0}}
STEPS = ("champion", "worse", "smoke_fails", "fixed", "revert")


@dataclass
class History:
    models_dir: Path
    server: ApiServer
    records: dict[str, dict[str, Any]]
    document: dict[str, Any]
    metrics_run: Any
    store: ArtifactStore


def make_model(models_dir: Path) -> Path:
    """breast_cancer, renamed: its DAG is release__bc_metrics; with a test of its build code."""
    model_dir = models_dir / MODEL
    (models_dir / "breast_cancer").rename(model_dir)
    train = model_dir / "train.py"
    train.write_text(train.read_text().replace('"name": "breast_cancer"', f'"name": "{MODEL}"'))
    edit_spec(model_dir, lambda spec: spec.update(name=MODEL, trigger_on=f"model-delivery://data/{MODEL}"))
    (model_dir / "tests").mkdir()
    (model_dir / "tests" / "test_train.py").write_text(MODEL_TEST)
    return model_dir


def set_build(model_dir: Path, *, C: float, gate: dict) -> None:
    def change(spec: dict) -> None:
        spec["build"]["params"]["C"] = C
        spec["gate"] = gate

    edit_spec(model_dir, change)


def release_history(model_dir: Path) -> dict[str, Any]:
    """The five runs, each meant to end as named."""
    runs = {}
    set_build(model_dir, C=1.0, gate=STRICT)
    runs["champion"] = run_release(MODEL, {"reason": "champion"})
    set_build(model_dir, C=0.02, gate=STRICT)  # passes the thresholds, worse than production
    runs["worse"] = run_release(MODEL, {"reason": "a worse model"})
    set_build(model_dir, C=0.5, gate=LOOSE)
    golden = (model_dir / "golden.json").read_text()
    cases = json.loads(golden)
    cases[0]["expect"]["equals"] = [7]  # an answer it can never give: the smoke test fails
    (model_dir / "golden.json").write_text(json.dumps(cases))
    runs["smoke_fails"] = run_release(MODEL, {"reason": "this one fails its smoke test"})
    (model_dir / "golden.json").write_text(golden)
    runs["fixed"] = run_release(MODEL, {"reason": "the same model, golden answers fixed"})
    runs["revert"] = get_dag("model_rollback").test(run_conf={"model": MODEL, "reason": "the fixed one misbehaves"})
    return runs


@pytest.fixture(scope="session")
def delivery_history(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path):
    from model_delivery.metrics import LATEST, metrics_dir
    from model_delivery.settings import get_settings

    base = tmp_path_factory.mktemp("delivery-history")
    with contextlib.ExitStack() as running:
        with release_env(base, ("breast_cancer",)) as models_dir, pytest.MonkeyPatch.context() as mp:
            model_dir = make_model(models_dir)
            server = running.enter_context(api_server(base / "api-server.log"))  # outlives the environment
            runs = release_history(model_dir)
            records = {step: load_record(MODEL, runs[step].run_id) for step in STEPS}
            password = json.loads((airflow_db.parent / "simple_auth_manager_passwords.json.generated")
                                  .read_text())["admin"]
            port = int(server.url.rsplit(":", 1)[1])
            mp.setenv("AIRFLOW_CONN_MODEL_DELIVERY_AIRFLOW_API", json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "login": "admin",
                 "password": password}))
            (base / "coverage.json").write_text(json.dumps(PROJECT_COVERAGE))
            mp.setenv("MODEL_DELIVERY_COVERAGE_JSON", str(base / "coverage.json"))
            metrics_run = get_dag("delivery_metrics").test()
            store = ArtifactStore(get_settings().artifact_root)
            document = json.loads((metrics_dir(store) / LATEST).read_text())
        try:
            yield History(models_dir, server, records, document, metrics_run, store)
        finally:
            kill_matching(str(base / "home"))  # the model servers and front proxies of this history


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)
