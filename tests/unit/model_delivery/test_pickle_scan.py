"""The pickle scan of a build's output (``model_delivery.pickle_scan``), on real files: crafted pickles whose
``__reduce__`` calls ``os.system``, in every container the scan recognises, and the real breast_cancer build's joblib
model; then the build stage's policy (refuse, warn, off) and the champion's scan before it is measured again.
"""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pytest

from model_delivery.build import BuildOutputs
from model_delivery.pickle_scan import UnsafePickle, check_artifact, scan_directory
from model_delivery.registry import Registry
from model_delivery.release import ReleaseContext, _champion, build
from model_delivery.settings import Settings
from tests.helpers.models import copy_models

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.unit.model_delivery.conftest import Builds

MODEL = "breast_cancer"


class _Shell:
    """Runs ``command`` through ``os.system`` when unpickled."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (self.command,)


def _evil(marker: Path) -> _Shell:
    return _Shell(f"touch {marker}")


def _linked(path: Path, obj: Any) -> None:
    """A symlink to a pickle outside the artifact: the store would store its target, so it is scanned."""
    outside = path.parent.parent / "outside.dat"
    outside.write_bytes(pickle.dumps(obj))
    path.symlink_to(outside)


def _torch_zip(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


WRITERS: list[Any] = [
    pytest.param("model.pkl", lambda p, o: p.write_bytes(pickle.dumps(o)), id="pickle"),
    pytest.param("model", lambda p, o: p.write_bytes(pickle.dumps(o, protocol=5)), id="no-suffix"),
    pytest.param("notes.txt", _linked, id="symlink-to-a-pickle"),
    pytest.param("weights.pt", lambda p, o: _torch_zip(p, pickle.dumps(o)), id="torch-zip"),
    pytest.param("objects.npy", lambda p, o: np.save(p, np.array([o, 1], dtype=object), allow_pickle=True),
                 id="npy-object-array"),
    # joblib writes an array's raw bytes inside the pickle stream: the payload after it must still be seen
    pytest.param("model.joblib", lambda p, o: joblib.dump({"w": np.arange(300.0), "hook": o}, p),
                 id="joblib-after-an-array"),
    pytest.param("model.joblib", lambda p, o: joblib.dump({"w": np.ones((4, 5)), "hook": o}, p, compress=3),
                 id="joblib-zlib"),
    pytest.param("model.joblib", lambda p, o: joblib.dump({"w": np.ones(7), "hook": o}, p, compress=("xz", 1)),
                 id="joblib-xz"),
    pytest.param("model.joblib", lambda p, o: joblib.dump({"w": np.ones(3), "o": np.array([o], dtype=object)}, p),
                 id="joblib-object-array"),
]


@pytest.mark.parametrize(("name", "write"), WRITERS)
def test_a_dangerous_global_is_found_in_every_container_and_nothing_is_loaded(
        tmp_path: Path, name: str, write: Callable[[Path, Any], None]) -> None:
    marker = tmp_path / "ran"
    artifact = tmp_path / "model"
    artifact.mkdir()
    write(artifact / name, _evil(marker))
    (artifact / "serving.json").write_text("{}")

    report = scan_directory(artifact)

    assert [f.path for f in report.flagged] == [name], report.to_dict()
    assert report.flagged[0].dangerous == ["posix.system"] and report.flagged[0].complete
    assert report.verdict == "refused" and report.to_dict()["dangerous"] == {name: ["posix.system"]}
    assert not marker.exists()  # the scan parsed opcodes; nothing was unpickled


def test_an_lz4_joblib_cannot_be_scanned_and_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"\x04\x22\x4d\x18" + os.urandom(64))

    with pytest.raises(UnsafePickle, match=r"model\.joblib could not be scanned to its end \(lz4"):
        check_artifact(tmp_path, "refuse-dangerous", log=lambda *a: None)


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its schema made once: each test gets a copy (its migrations take seconds)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    Registry(f"sqlite:///{path}").versions(MODEL)
    return path


def test_a_joblib_stream_that_cannot_be_walked_to_its_end_is_refused(tmp_path: Path) -> None:
    joblib.dump({"w": np.arange(1000.0), "after": "anything could hide here"}, tmp_path / "model.joblib")
    whole = (tmp_path / "model.joblib").read_bytes()
    (tmp_path / "model.joblib").write_bytes(whole[: len(whole) // 2])  # cut inside the array

    with pytest.raises(UnsafePickle, match=r"model\.joblib could not be scanned to its end"):
        check_artifact(tmp_path, "refuse-dangerous", log=lambda *a: None)
    assert check_artifact(tmp_path, "warn", log=lambda *a: None).verdict == "warned"


def _context(tmp_path: Path, mlflow_db: Path) -> tuple[ReleaseContext, list[str]]:
    models = copy_models(tmp_path / "models", (MODEL,))
    shutil.copy(mlflow_db, tmp_path / "mlflow.db")
    settings = Settings(home=tmp_path / "home", models_dir=models, artifact_root=f"file://{tmp_path / 'store'}",
                        artifact_conn_id=None, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    lines: list[str] = []
    rc = ReleaseContext(model=MODEL, run_id="scanned-build", dag_id=f"release__{MODEL}",
                        log=lambda fmt, *args: lines.append(fmt % args), settings=settings)
    return rc, lines


def _outputs(builds: Builds, tmp_path: Path, extra: dict[str, Any] | None = None) -> BuildOutputs:
    """The real v1 build's output (its joblib sklearn pipeline), plus ``extra`` files pickled into ``model/``."""
    work = tmp_path / "work"
    shutil.copytree(builds.v1.model_dir, work / "model")
    for name, obj in (extra or {}).items():
        (work / "model" / name).write_bytes(pickle.dumps(obj))
    (work / "data").mkdir()
    data = {name: Path(shutil.copy(path, work / "data" / f"{name}.csv"))
            for name, path in (("train", builds.v1.train_csv), ("eval", builds.v1.eval_csv))}
    return BuildOutputs(work_dir=work, model_dir=work / "model", data=data)


def _stored_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "store").rglob("*") if p.is_file()]


def test_the_real_joblib_sklearn_build_passes_and_its_scan_is_recorded(
        builds: Builds, tmp_path: Path, mlflow_db: Path) -> None:
    rc, lines = _context(tmp_path, mlflow_db)

    result = build(rc, outputs=_outputs(builds, tmp_path))

    scan = result["pickle_scan"]
    assert scan["verdict"] == "clean" and scan["policy"] == "refuse-dangerous"
    assert scan["scanner"] == "picklescan" and scan["scanner_version"]
    assert scan["scanned"] == ["model.joblib"] and scan["files_scanned"] == 1  # not serving.json
    assert scan["dangerous"] == {} and scan["incomplete"] == {}
    # walked past joblib's arrays to the end: the estimator after the scaler's arrays is seen
    assert "sklearn.linear_model._logistic.LogisticRegression" in scan["suspicious"]["model.joblib"]
    assert rc.store.exists(MODEL, result["digest"])
    assert any(line.startswith("pickle scan of the build output (picklescan ") and "clean" in line for line in lines)


def test_a_malicious_pickle_in_the_build_output_is_refused_and_nothing_is_stored(
        builds: Builds, tmp_path: Path, mlflow_db: Path) -> None:
    rc, _ = _context(tmp_path, mlflow_db)
    marker = tmp_path / "ran"
    outputs = _outputs(builds, tmp_path, {"preprocess.pkl": _evil(marker)})

    with pytest.raises(UnsafePickle) as refused:
        build(rc, outputs=outputs)

    message = str(refused.value)
    assert "preprocess.pkl imports posix.system" in message and "Nothing was stored" in message
    assert "Fix:" in message and "security.pickle_scan" in message
    assert (refused.value.result or {}).get("dangerous") == {"preprocess.pkl": ["posix.system"]}
    assert _stored_files(tmp_path) == [] and rc.registry.versions(MODEL) == []  # nothing stored, nothing registered
    assert not outputs.work_dir.exists() and not marker.exists()


def test_warn_records_the_finding_and_stores(builds: Builds, tmp_path: Path, mlflow_db: Path) -> None:
    rc, lines = _context(tmp_path, mlflow_db)

    result = build(rc, outputs=_outputs(builds, tmp_path, {"preprocess.pkl": _evil(tmp_path / "ran")}),
                   pickle_scan="warn")

    assert result["pickle_scan"]["verdict"] == "warned"
    assert result["pickle_scan"]["dangerous"] == {"preprocess.pkl": ["posix.system"]}
    assert rc.store.exists(MODEL, result["digest"])
    assert any("warned; preprocess.pkl imports posix.system" in line for line in lines)


def test_off_does_not_scan(builds: Builds, tmp_path: Path, mlflow_db: Path) -> None:
    rc, lines = _context(tmp_path, mlflow_db)

    result = build(rc, outputs=_outputs(builds, tmp_path, {"preprocess.pkl": _evil(tmp_path / "ran")}),
                   pickle_scan="off")

    assert result["pickle_scan"]["verdict"] == "off" and result["pickle_scan"]["files_scanned"] == 0
    assert rc.store.exists(MODEL, result["digest"])
    assert "pickle scan of the build output: off (security.pickle_scan)" in lines


def test_a_dangerous_champion_is_not_loaded_to_be_measured_again(
        builds: Builds, tmp_path: Path, mlflow_db: Path) -> None:
    rc, _ = _context(tmp_path, mlflow_db)
    evil = tmp_path / "champion"
    shutil.copytree(builds.v2.model_dir, evil)
    (evil / "model.joblib").write_bytes(pickle.dumps(_evil(tmp_path / "ran")))
    stored = rc.store.put_directory(MODEL, evil)  # production from before builds were scanned
    champion, _ = rc.registry.register(MODEL, source=stored.uri, digest=stored.digest, tags={}, params={})
    rc.registry.promote(MODEL, champion.version)
    measured: list[Path] = []

    def measure(directory: Path) -> tuple[dict[str, float], Any]:
        measured.append(directory)
        return {}, None

    found, paired = _champion(rc, {"version": "999"}, tmp_path / "scratch", measure)

    assert measured == [] and paired is None
    assert found is not None and found["paired"] is False
    assert "model.joblib imports posix.system" in found["note"] and "not loaded to be measured again" in found["note"]


def test_a_joblib_without_arrays_and_a_plain_pickle_of_arrays_are_clean(tmp_path: Path) -> None:
    joblib.dump({"C": 1.0}, tmp_path / "params.joblib")
    (tmp_path / "weights.pkl").write_bytes(pickle.dumps({"coef": np.arange(3.0), "classes": np.array(["a", "b"])}))

    report = scan_directory(tmp_path)

    assert report.verdict == "clean" and report.to_dict()["scanned"] == ["params.joblib", "weights.pkl"]
