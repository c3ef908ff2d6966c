"""Test session set-up: an isolated Airflow home, metadata DB and model-delivery home.

Airflow reads its configuration when first imported, so the environment is set here,
at import time, before any test module imports airflow. Nothing is mocked: the
Airflow DB is real SQLite, MLflow is real SQLite, servers are real processes on
127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SESSION_DIR = Path(tempfile.mkdtemp(prefix="model-delivery-tests-"))
AIRFLOW_HOME = SESSION_DIR / "airflow"
AIRFLOW_HOME.mkdir()

os.environ.update(
    AIRFLOW_HOME=str(AIRFLOW_HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT / "dags"),
    AIRFLOW__CORE__PLUGINS_FOLDER=str(PROJECT / "plugins"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    AIRFLOW__CORE__UNIT_TEST_MODE="False",
    MODEL_DELIVERY_HOME=str(SESSION_DIR / "md"),
    GIT_PYTHON_REFRESH="quiet",
)
os.environ.pop("MODEL_DELIVERY_MODELS_DIR", None)
os.environ.pop("MODEL_DELIVERY_ARTIFACT_ROOT", None)
os.environ.pop("MODEL_DELIVERY_TRACKING_URI", None)
os.environ.pop("MODEL_DELIVERY_RECORDS_ROOT", None)


def run_airflow(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the airflow CLI of this venv with the session's environment."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args],
        capture_output=True,
        text=True,
        check=check,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Initialise the session's Airflow metadata DB once."""
    result = run_airflow("db", "migrate", check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture(autouse=True)
def _no_ansible_patches_left() -> Iterator[None]:
    """Fail the test that leaves Ansible's process-wide patches behind (a later ``import torch`` in its worker breaks)."""
    yield
    from tests.helpers.ansible_module import undo_ansible_patches, unpatched

    left = unpatched()
    if left:
        undo_ansible_patches()
        pytest.fail(f"the test left Ansible's patches of {', '.join(left)} in the process, and a later `import torch` "
                    "fails on them; load Ansible modules with tests.helpers.ansible_module.load_ansible_module")


LONGEST_FIRST = (
    "tests/integration/test_ansible_vllm.py",
    "tests/integration/test_ansible_release.py",
    "tests/integration/test_ansible_faults.py",
    "tests/integration/test_metrics_dag.py",
    "tests/integration/test_releases_page.py",
    "tests/integration/test_team_stack.py",
    "tests/integration/test_rollback_dag.py",
    "tests/integration/test_ci_cli.py",
    "tests/integration/test_lm_release.py",
    "tests/integration/test_gate_release.py",
    "tests/integration/test_vllm_local.py",
    "tests/integration/test_release.py",
    "tests/integration/test_approval.py",
    "tests/integration/test_data_validation.py",
    "tests/integration/test_notifications.py",
    "tests/integration/test_k8s_release.py",
    "tests/integration/test_tampered.py",
    "tests/integration/test_lm_evaluation.py",
)
"""The slowest test files (by --durations on this 2-core machine), started first; the rest follow in order."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Test files in the order pytest-xdist should start them (``--dist loadfile``): the longest first.

    Each file stays whole on one worker (its tests share module fixtures and run in order) and
    keeps its tests' order; only the order of the files changes, so that no long one starts last.
    """
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable


SAME_WORKER = {"tests/integration/test_releases_page.py": "tests/integration/test_metrics_dag.py"}
"""Test files that share a session fixture (the delivery history) run on one worker, so it is built once."""


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile``, grouping the files of SAME_WORKER, in the order of the collection (LONGEST_FIRST).

    xdist would otherwise reorder the files by their number of tests, putting the many short unit
    tests first and the long integration files last.
    """
    if config.option.dist != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileGroups(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(path, path)

    config.option.loadscopereorder = False
    return FileGroups(config, log)  # type: ignore[arg-type]


FILE_SECONDS: dict[str, float] = {}
"""Seconds spent in each test file (set-up, call and tear-down of its tests), summed where the reports arrive."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    FILE_SECONDS[path] = FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    """The slowest test files (what LONGEST_FIRST and the suite's time budget are judged by)."""
    if not FILE_SECONDS or getattr(config, "workerinput", None) is not None:
        return
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    write(f"slowest files (of {len(FILE_SECONDS)}, {sum(FILE_SECONDS.values()):.0f} s of test time in all):")
    for path, seconds in sorted(FILE_SECONDS.items(), key=lambda item: -item[1])[:20]:
        write(f"{seconds:9.1f}s {path}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop every process the tests started (their command lines name the session dir or pytest's tmp dir)."""
    import psutil

    markers = [str(SESSION_DIR)]
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        try:
            markers.append(str(factory.getbasetemp()))
        except (OSError, ValueError):
            pass
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and any(marker in cmdline for marker in markers):
                proc.kill()
        except psutil.Error:
            pass
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


def run_root(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A directory every test worker of this run shares (pytest-xdist gives each worker its own basetemp)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """One tiny code_lm, trained once per run, whichever worker asks first: ``<dir>/model`` and ``<dir>/data``."""
    from filelock import FileLock

    from tests.helpers.lm import build_lm

    root = run_root(tmp_path_factory, worker_id) / "tiny_lm"
    root.mkdir(exist_ok=True)
    out = root / "out"
    with FileLock(root / "build.lock"):
        if not (out / "model" / "training.json").is_file():
            shutil.rmtree(root / "partial", ignore_errors=True)
            build_lm(root / "partial" / "out")
            (root / "partial" / "out").rename(out)
    return out


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """vLLM's own virtualenv (scripts/vllm-venv.sh), created once and kept under .local/."""
    from tests.helpers.lm import vllm_python as make

    return make()
