"""The release stages' data path on real files: a build's Parquet data is recorded as Parquet, and
validate_data and evaluate (the candidate, and production measured again on the same rows) read the
format recorded, through the stages' own entry points (real store, MLflow on SQLite, sandboxed predictions).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import pandas as pd
import pytest

from model_delivery.build import BuildOutputs, _check_outputs
from model_delivery.evaluate import compute_metrics
from model_delivery.exceptions import ReleaseFailed
from model_delivery.release import ReleaseContext, _download_data, build, evaluate, validate_data
from model_delivery.settings import Settings
from model_delivery.validation.data import ValidationFailed
from model_server.manifest import hash_file
from tests.helpers.models import PROJECT, copy_models, edit_spec

if TYPE_CHECKING:
    from tests.unit.model_delivery.conftest import Builds

MODEL = "breast_cancer"
FEATURES_NOT_USED = ("target", "size_group")
PROJECT_MODELS = PROJECT / "include" / "models"


def _context(tmp_path: Path) -> tuple[ReleaseContext, list[str]]:
    models = copy_models(tmp_path / "models", (MODEL,))
    edit_spec(models / MODEL, lambda spec: spec["gate"].pop("bootstrap"))  # seconds of resampling, no data read
    settings = Settings(home=tmp_path / "home", models_dir=models, artifact_root=f"file://{tmp_path / 'store'}",
                        artifact_conn_id=None, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    lines: list[str] = []
    rc = ReleaseContext(model=MODEL, run_id="parquet-data", dag_id=f"release__{MODEL}",
                        log=lambda fmt, *args: lines.append(fmt % args), settings=settings)
    return rc, lines


def _outputs(rc: ReleaseContext, builds: Builds, tmp_path: Path, frames: dict[str, pd.DataFrame]) -> BuildOutputs:
    """The v1 build's artifact with its data written as Parquet (several row groups), checked as a build's are."""
    out = tmp_path / "work" / "out"
    shutil.copytree(builds.v1.model_dir, out / "model")
    (out / "data").mkdir()
    for name, frame in frames.items():
        frame.to_parquet(out / "data" / f"{name}.parquet", row_group_size=64, index=False)
    return _check_outputs(rc.spec, out.parent, out)


def _expected_metrics(model_dir: Path, frame: pd.DataFrame, metrics: list[str]) -> dict[str, float]:
    """The metrics of a built model on ``frame``, computed here (the test trusts its own build's pickle)."""
    estimator = joblib.load(model_dir / "model.joblib")
    features = frame.drop(columns=[c for c in FEATURES_NOT_USED if c in frame.columns]).to_numpy()
    outputs = {"predict": estimator.predict(features), "predict_proba": estimator.predict_proba(features)}
    return compute_metrics("classification", metrics, frame["target"].to_numpy(), outputs)


def test_parquet_data_is_recorded_as_parquet_then_validated_and_evaluated_as_recorded(
    builds: Builds, tmp_path: Path
) -> None:
    train, evaluation = pd.read_csv(builds.v1.train_csv), pd.read_csv(builds.v1.eval_csv)
    rc, lines = _context(tmp_path)
    champion_stored = rc.store.put_directory(MODEL, builds.v2.model_dir)  # production: v2, measured again
    champion, _ = rc.registry.register(MODEL, source=champion_stored.uri, digest=builds.v2.digest, tags={},
                                       params={})
    rc.registry.promote(MODEL, champion.version)

    outputs = _outputs(rc, builds, tmp_path, {"train": train, "eval": evaluation})
    written = {name: hash_file(path) for name, path in outputs.data.items()}

    result = build(rc, outputs=outputs)

    for name in ("train", "eval"):
        entry = result["data"][name]
        assert entry["format"] == "parquet"
        assert entry["uri"].endswith(f"/releases/parquet-data/data/{name}.parquet")
        assert (entry["sha256"], entry["size_bytes"]) == written[name]

    checked = validate_data(rc, result)

    assert checked["passed"], checked["problems"]
    assert f"data checks passed: train ({len(train)} rows), eval ({len(evaluation)} rows)" in lines
    assert all(Path(uri.removeprefix("file://")).is_file() for uri in checked["gx_results"].values())

    measured = evaluate(rc, result)

    names = rc.spec.evaluation.metrics
    assert measured["rows"] == len(evaluation)
    assert measured["metrics"] == pytest.approx(_expected_metrics(builds.v1.model_dir, evaluation, names))
    assert measured["champion"]["version"] == champion.version and measured["champion"]["paired"] is True
    assert measured["champion"]["metrics"] == pytest.approx(
        _expected_metrics(builds.v2.model_dir, evaluation, names))
    assert set(measured["slices"]["size_group"]) == set(evaluation["size_group"].astype(str))


def test_a_parquet_train_set_that_fails_its_checks_is_named_by_its_file(builds: Builds, tmp_path: Path) -> None:
    train = pd.read_csv(builds.v1.train_csv)
    train.loc[[3, 40, 200], "mean radius"] = None
    rc, _ = _context(tmp_path)
    stored: dict[str, Any] = {}
    for name, frame, fmt in (("train", train, "parquet"), ("eval", pd.read_csv(builds.v1.eval_csv), "csv")):
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        dest = rc.record.dir / "data" / path.name
        sha, size = rc.store.put_file(path, dest)
        stored[name] = {"uri": str(dest), "sha256": sha, "size_bytes": size, "format": fmt}

    with pytest.raises(ValidationFailed) as caught:
        validate_data(rc, {"data": stored})

    problems = caught.value.result["problems"]
    assert any(p.startswith("train.parquet: expect_column_values_to_not_be_null on column 'mean radius': 3 of")
               for p in problems), problems
    assert not [p for p in problems if p.startswith("eval")], problems


@pytest.mark.parametrize(("entry", "local", "fmt"), [
    pytest.param({"format": "parquet"}, "eval.parquet", "parquet", id="recorded-parquet"),
    pytest.param({"format": "csv"}, "eval.csv", "csv", id="recorded-csv"),
    pytest.param({}, "eval.csv", "csv", id="record-before-formats"),
])
def test_the_data_is_downloaded_under_the_name_of_its_recorded_format(
    tmp_path: Path, entry: dict[str, str], local: str, fmt: str
) -> None:
    stored = tmp_path / "stored" / "eval-data"  # the stored name says nothing: the record decides
    stored.parent.mkdir()
    stored.write_bytes(b"a,target\n1,0\n")
    (tmp_path / "local").mkdir()

    path, found = _download_data({"data": {"eval": {"uri": f"file://{stored}", **entry}}}, "eval", tmp_path / "local")

    assert (path.name, found) == (local, fmt)
    assert path.read_bytes() == stored.read_bytes()


def test_a_record_naming_an_unknown_format_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ReleaseFailed, match=r"eval data record names format 'feather' .*Fix: rebuild"):
        _download_data({"data": {"eval": {"uri": "file:///x/eval.feather", "format": "feather"}}}, "eval", tmp_path)


CONFS = [
    pytest.param({}, None, id="empty"),
    pytest.param({"reason": "weekly", "force": False, "dry_run": False}, None, id="every-key"),
    pytest.param({"force": True, "reason": "hotfix"}, None, id="force-with-a-reason"),
    pytest.param([], "conf must be a JSON object (got a list)", id="a-list"),
    pytest.param("reason", "conf must be a JSON object (got 'reason')", id="a-string"),
    pytest.param({"force": True}, "conf 'force' is true but 'reason' is empty", id="force-without-reason"),
    pytest.param({"force": True, "reason": " \n"}, "conf 'force' is true but 'reason' is empty", id="blank-reason"),
    pytest.param({"reason": "r", "dryrun": True}, "conf has unknown key(s) ['dryrun']", id="unknown-key"),
    pytest.param({"force": "yes"}, "conf 'force' must be true or false (got 'yes')", id="force-not-boolean"),
    pytest.param({"reason": 42}, "conf 'reason' must be a string (got 42)", id="reason-not-a-string"),
    pytest.param({"reason": "x" * 10_000}, "conf 'reason' has 10000 characters, more than 500", id="reason-too-long"),
    pytest.param({"k" * 10_000: 1, **{f"x{i}": i for i in range(50)}}, "and 46 more", id="many-long-unknown-keys"),
]


@pytest.mark.parametrize(("conf", "refusal"), CONFS)
def test_check_conf_refuses_in_one_bounded_line_naming_the_key(conf: Any, refusal: str | None) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from model_delivery.exceptions import InvalidConf
    from model_delivery.release import check_conf

    if refusal is None:
        check_conf(conf)
        return
    with pytest.raises(InvalidConf) as caught:
        check_conf(conf)
    message = str(caught.value)
    assert refusal in message and "Fix:" in message
    assert "\n" not in message and len(message) < 400  # one line; a 10 kB value is never echoed
    assert isinstance(caught.value, AirflowFailException)  # never retried


def test_the_build_refuses_force_without_a_reason_before_it_builds_anything(tmp_path: Path) -> None:
    from model_delivery.exceptions import InvalidConf

    rc, _ = _context(tmp_path)
    rc.conf = {"force": True, "reason": "", "dry_run": False}
    with pytest.raises(InvalidConf, match="'reason' is empty"):
        build(rc)
    assert not rc.settings.scratch_dir.exists()  # no build was started


def test_the_build_refuses_a_port_another_model_claims_before_it_builds_anything(tmp_path: Path) -> None:
    from model_delivery.exceptions import InvalidModelSpec

    rc, _ = _context(tmp_path)
    models = copy_models(rc.settings.models_dir, ("wine",))
    port = rc.spec.deploy.local.port  # type: ignore[union-attr]
    edit_spec(models / "wine", lambda spec: spec["deploy"]["local"].update(port=port))
    with pytest.raises(InvalidModelSpec, match=rf"field 'deploy.local.port' is {port} on 127.0.0.1, which model "
                                               r"'wine' claims too .*Fix: give one of 'breast_cancer' and 'wine'"):
        build(rc)
    assert not rc.settings.scratch_dir.exists()


def test_the_build_refuses_a_serving_json_of_another_model_before_storing_anything(tmp_path: Path) -> None:
    from model_delivery.exceptions import BuildFailed

    rc, _ = _context(tmp_path)
    out = tmp_path / "work" / "out"
    shutil.copytree(PROJECT_MODELS / "wine", out / "model")  # any files; the serving.json is what counts
    (out / "model" / "serving.json").write_text('{"name": "wine", "flavor": "sklearn", "model_file": "model.yaml", '
                                                '"inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 30]}],'
                                                ' "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}]}')
    (out / "data").mkdir()
    for name in ("train", "eval"):
        (out / "data" / f"{name}.csv").write_text("a,target\n1,0\n")
    outputs = _check_outputs(rc.spec, out.parent, out)

    with pytest.raises(BuildFailed, match="serving.json that does not fit the spec: field 'name' is 'wine', not the "
                                          "spec's name 'breast_cancer'"):
        build(rc, outputs=outputs)
    assert rc.store.layout.models() == [] and not (tmp_path / "store" / MODEL).exists()  # nothing stored
    assert not outputs.work_dir.exists()
