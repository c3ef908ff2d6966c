"""Delivery metrics: coverage, failure rate, MTTF, MTTR and the DORA figures, from real run history.

The formulas are pure functions over :class:`Run`, a small record of one release or rollback
run; every definition is written out in ``docs/metrics.md``. The rest of this module gathers
the runs (release records in the artifact store, Airflow's DAG runs and task instances read
through its REST API), measures coverage, and writes the results:

``<artifact root>/_delivery_metrics/latest.json``   the latest figures, per window, overall and per model
``<artifact root>/_delivery_metrics/history.csv``   one row per (computation, window, scope), appended

Nothing heavy is imported at module level: Airflow loads every file under ``plugins/``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from airflow.sdk import ObjectStoragePath

    from model_delivery.store import ArtifactStore

WINDOWS = (7, 30, 90)
DAY = 86_400.0
FAILURE_OUTCOMES = frozenset({"failed", "rolled-back"})
RESTORING_OUTCOMES = frozenset({"released", "reverted"})
LATEST = "latest.json"
HISTORY = "history.csv"
ASSET_URI = "model-delivery://metrics/delivery"
ROLLBACK_DAG = "model_rollback"
RELEASE_PREFIX = "release__"

NO_RUNS = "no runs observed"
NO_FAILURE = "no failure in window"
NO_RESTORED = "no failure in window was restored"
NO_DEPLOYMENT = "no deployment in window"
NO_RELEASE = "no release in window"


@dataclass(frozen=True)
class Run:
    """One finished run of a release (``kind="release"``) or a manual rollback (``kind="rollback"``).

    :param outcome: released, rejected, rolled-back, failed, no-change (releases); reverted,
        refused, no-change, failed (rollbacks).
    :param started_at: when the run began (the record's ``created_at``).
    :param finished_at: when its outcome was recorded.
    :param failed_at: when its failure was detected (the end of the first failed stage; for a
        ``reverted`` rollback, when the rollback started). None unless the run is a failure.
    :param restored_at: when the run itself restored service (its automatic rollback ended, or
        the manual rollback promoted the old version). None when it did not.
    :param deployed: the run started its candidate on the deploy target (``deploy_staging`` succeeded);
        for a released run, also that it put a new artifact in production: one whose gate verdict is
        ``no-change`` (production already served that artifact: a forced re-release, or a spec edit that
        left the artifact the same) is released but is not a deployment.
    :param deployed_at: when production was switched for good (``promote`` ended); releases only.
    :param change_at: when the change started: the commit time of a clean ``git_sha`` when known,
        else the start of the build stage.
    :param version: the registry version the run delivered (or, for a rollback, went back to).
    :param reverted_version: for a ``reverted`` rollback, the version it took out of production.
    """

    model: str
    run_id: str
    outcome: str
    started_at: datetime
    finished_at: datetime
    kind: str = "release"
    failed_at: datetime | None = None
    restored_at: datetime | None = None
    deployed: bool = False
    deployed_at: datetime | None = None
    change_at: datetime | None = None
    change_source: str | None = None
    version: str | None = None
    reverted_version: str | None = None
    dag_id: str | None = None
    source: str = "record"

    @property
    def is_failure(self) -> bool:
        """A failure: a run that ended failed or rolled-back, or a manual rollback that reverted production."""
        return self.outcome in FAILURE_OUTCOMES or (self.kind == "rollback" and self.outcome == "reverted")

    @property
    def failure_time(self) -> datetime:
        return self.failed_at or self.finished_at

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}


# -- the formulas ---------------------------------------------------------------------------------


def in_window(runs: Iterable[Run], *, end: datetime, days: float, model: str | None = None) -> list[Run]:
    """The runs of ``model`` (every model when None) that finished in ``(end - days, end]``."""
    start = end - timedelta(days=days)
    return [r for r in runs if (model is None or r.model == model) and start < r.finished_at <= end]


def observed_seconds(runs: Iterable[Run], *, end: datetime, days: float, model: str | None = None) -> float:
    """Total time: the window, clipped to start no earlier than the first run ever seen in scope.

    0 when no run of the scope started before ``end``.
    """
    starts = [r.started_at for r in runs if (model is None or r.model == model) and r.started_at <= end]
    if not starts:
        return 0.0
    begin = max(end - timedelta(days=days), min(starts))
    return max(0.0, (end - begin).total_seconds())


def failure_rate(failures: int, total_seconds: float) -> float | None:
    """Failures per day: ``failures / total time``. None when no time was observed."""
    if total_seconds <= 0:
        return None
    return failures / (total_seconds / DAY)


def mttf(failures: int, total_seconds: float) -> float | None:
    """Mean time to failure in seconds: ``total time / number of failures``. None when there is no failure."""
    if failures == 0 or total_seconds <= 0:
        return None
    return total_seconds / failures


def restoration_time(failure: Run, history: Iterable[Run], *, end: datetime) -> datetime | None:
    """When service was restored after ``failure``: its own rollback's end, or else the finish of the
    next run of the same model that released or reverted (up to ``end``); None while still open."""
    if failure.restored_at is not None:
        return failure.restored_at
    after = [
        r.finished_at
        for r in history
        if r.model == failure.model and r is not failure and r.outcome in RESTORING_OUTCOMES
        and failure.failure_time <= r.finished_at <= end
    ]
    return min(after, default=None)


def mttr(failures: Iterable[Run], history: Iterable[Run], *, end: datetime) -> tuple[float | None, int]:
    """Mean time to restore in seconds over the restored failures, and how many are still open."""
    history = list(history)
    durations, still_open = [], 0
    for failure in failures:
        restored = restoration_time(failure, history, end=end)
        if restored is None:
            still_open += 1
        else:
            durations.append(max(0.0, (restored - failure.failure_time).total_seconds()))
    return (statistics.fmean(durations) if durations else None), still_open


def deployment_frequency(deployments: int, total_seconds: float) -> float | None:
    """Released runs per day. None when no time was observed."""
    if total_seconds <= 0:
        return None
    return deployments / (total_seconds / DAY)


def lead_times(released: Iterable[Run]) -> list[float]:
    """Seconds from the change (commit, else build start) to production (promote's end), per release."""
    return [
        max(0.0, (r.deployed_at - r.change_at).total_seconds())
        for r in released
        if r.deployed_at is not None and r.change_at is not None
    ]


def was_reverted(release: Run, history: Iterable[Run], *, end: datetime) -> bool:
    """True when a manual rollback took this release's version out of production before the model's next release."""
    later = sorted((r for r in history if r.model == release.model and release.finished_at < r.finished_at <= end),
                   key=lambda r: r.finished_at)
    for run in later:
        if run.kind == "release" and run.outcome == "released":
            return False
        if run.kind == "rollback" and run.outcome == "reverted" and run.reverted_version == release.version:
            return True
    return False


def change_failure_rate(deployed: Iterable[Run], history: Iterable[Run], *, end: datetime) -> tuple[float | None, int, int]:
    """Deployed changes that needed a rollback / deployed changes; with the two counts.

    A deployed change needed a rollback when its run ended ``rolled-back``, or it was released
    and later reverted by a manual rollback. None when nothing was deployed.
    """
    deployed = [r for r in deployed if r.kind == "release" and r.deployed]
    history = list(history)
    needing = sum(
        1 for r in deployed
        if r.outcome == "rolled-back" or (r.outcome == "released" and was_reverted(r, history, end=end))
    )
    return (needing / len(deployed) if deployed else None), needing, len(deployed)


def figures(runs: Iterable[Run], *, end: datetime, days: float, model: str | None = None) -> dict[str, Any]:
    """Every delivery figure for one scope (a model, or all when None) over the window ending at ``end``."""
    history = [r for r in runs if model is None or r.model == model]
    window = in_window(history, end=end, days=days)
    total = observed_seconds(history, end=end, days=days)
    failures = [r for r in window if r.is_failure]
    releases = [r for r in window if r.kind == "release"]
    released = [r for r in releases if r.outcome == "released" and r.deployed]  # deployments
    restore, still_open = mttr(failures, history, end=end)
    cfr, needing, deployed = change_failure_rate(releases, history, end=end)
    leads = lead_times(released)
    outcomes: dict[str, int] = {}
    for r in window:
        outcomes[f"{r.kind}:{r.outcome}"] = outcomes.get(f"{r.kind}:{r.outcome}", 0) + 1
    result: dict[str, Any] = {
        "runs": len(window),
        "outcomes": dict(sorted(outcomes.items())),
        "observed_seconds": total,
        "observed_days": total / DAY,
        "failures": len(failures),
        "failure_rate_per_day": failure_rate(len(failures), total),
        "mttf_seconds": mttf(len(failures), total),
        "mttr_seconds": restore,
        "open_failures": still_open,
        "deployments": len(released),
        "deployment_frequency_per_day": deployment_frequency(len(released), total),
        "lead_time_seconds": {
            "median": statistics.median(leads) if leads else None,
            "mean": statistics.fmean(leads) if leads else None,
            "count": len(leads),
        },
        "change_failure_rate": cfr,
        "changes_needing_rollback": needing,
        "changes_deployed": deployed,
        "rejections": sum(1 for r in releases if r.outcome == "rejected"),
    }
    result["notes"] = _notes(result)
    return result


def _notes(result: dict[str, Any]) -> dict[str, str]:
    """Why a figure is None, in words (never a division by zero)."""
    notes: dict[str, str] = {}
    if result["observed_seconds"] <= 0:
        notes.update(failure_rate=NO_RUNS, deployment_frequency=NO_RUNS)
    if result["failures"] == 0:
        notes.update(mttf=NO_FAILURE, mttr=NO_FAILURE)
    elif result["mttr_seconds"] is None:
        notes["mttr"] = NO_RESTORED
    if result["change_failure_rate"] is None:
        notes["change_failure_rate"] = NO_DEPLOYMENT
    if result["lead_time_seconds"]["count"] == 0:
        notes["lead_time"] = NO_RELEASE
    return notes


# -- coverage ---------------------------------------------------------------------------------------


def line_coverage(report: dict[str, Any]) -> dict[str, Any]:
    """Line coverage from a coverage.py JSON report: ``covered lines / statements``."""
    totals = report.get("totals") or {}
    covered = int(totals.get("covered_lines", 0))
    statements = int(totals.get("num_statements", 0))
    result: dict[str, Any] = {
        "covered_lines": covered,
        "num_statements": statements,
        "coverage": covered / statements if statements else None,
        "measured_at": (report.get("meta") or {}).get("timestamp"),
    }
    if not statements:
        result["note"] = "no statements measured"
    return result


def coverage_file() -> Path:
    """Where ``make test`` writes the project's coverage.py JSON (``MODEL_DELIVERY_COVERAGE_JSON``)."""
    from pathlib import Path

    from model_delivery.settings import PROJECT_ROOT

    return Path(os.environ.get("MODEL_DELIVERY_COVERAGE_JSON", PROJECT_ROOT / ".local" / "coverage.json"))


def project_coverage(path: Path | None = None) -> dict[str, Any]:
    """The project's own line coverage, from the JSON report of its last ``make test``."""
    path = path or coverage_file()
    if not path.is_file():
        return {"coverage": None, "source": str(path), "note": f"not measured: {path} does not exist (make test writes it)"}
    try:
        report = json.loads(path.read_text())
    except ValueError as exc:
        return {"coverage": None, "source": str(path), "note": f"unreadable coverage report: {exc}"}
    return {**line_coverage(report), "source": str(path)}


def model_tests_dir(model_dir: Path) -> Path | None:
    """A model's own tests: ``<model>/tests/`` with at least one ``test_*.py``."""
    tests = model_dir / "tests"
    return tests if tests.is_dir() and any(tests.glob("test_*.py")) else None


def model_coverage(model_dir: Path, *, timeout: float = 600) -> dict[str, Any]:
    """Run a model's own tests under coverage.py, in a copy of its folder, and measure its build code.

    The build code is every ``.py`` file of the model folder outside ``tests/``.
    """
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    if model_tests_dir(model_dir) is None:
        return {"coverage": None, "note": "no tests (add <model>/tests/test_*.py)"}
    with tempfile.TemporaryDirectory(prefix="model-coverage-") as tmp:
        work = Path(tmp) / model_dir.name
        shutil.copytree(model_dir, work)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "COV_CORE", "COVERAGE"))}
        data = Path(tmp) / ".coverage"
        base = [sys.executable, "-m", "coverage"]
        run = subprocess.run(
            [*base, "run", f"--data-file={data}", f"--source={work}", f"--omit={work}/tests/*", "-m", "pytest",
             "-q", "-p", "no:cacheprovider", "--rootdir", str(work), "tests"],
            cwd=work, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        report = Path(tmp) / "coverage.json"
        subprocess.run([*base, "json", f"--data-file={data}", "-o", str(report), "-q"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
        summary = (run.stdout.strip().splitlines() or [""])[-1]
        if not report.is_file():
            return {"coverage": None, "tests_passed": False, "tests": summary,
                    "note": f"coverage could not be measured: {run.stderr[-500:] or summary}"}
        return {**line_coverage(json.loads(report.read_text())), "tests_passed": run.returncode == 0, "tests": summary}


# -- runs from release records -------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime; None when absent or not a time."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def stage_end(entry: dict[str, Any] | None) -> datetime | None:
    """When a stage entry ended: its start plus its seconds."""
    if not entry:
        return None
    started = parse_time(entry.get("started_at"))
    if started is None:
        return None
    return started + timedelta(seconds=float(entry.get("seconds") or 0.0))


def _failed_at(stages: dict[str, dict[str, Any]], finished: datetime) -> datetime:
    ends = [stage_end(e) for e in stages.values() if e.get("status") == "failed"]
    return min((e for e in ends if e is not None), default=finished)


def _change_at(record: dict[str, Any], commit_time: Callable[[str], datetime | None] | None,
               build_start: datetime | None) -> tuple[datetime | None, str | None]:
    sha = str((record.get("artifact") or {}).get("git_sha") or "")
    if commit_time and sha and sha != "unknown" and not sha.endswith("-dirty"):
        committed = commit_time(sha)
        if committed is not None and (build_start is None or committed <= build_start):
            return committed, "commit"
    return build_start, ("build" if build_start else None)


def run_from_record(record: dict[str, Any], commit_time: Callable[[str], datetime | None] | None = None) -> Run | None:
    """A :class:`Run` from a ``release.json``; None while the run has no outcome yet."""
    outcome, finished = record.get("outcome"), parse_time(record.get("finished_at"))
    if not outcome or finished is None:
        return None
    stages: dict[str, dict[str, Any]] = record.get("stages") or {}
    kind = "rollback" if "resolve" in stages else "release"
    starts = [t for t in (parse_time(e.get("started_at")) for e in stages.values()) if t is not None]
    started = parse_time(record.get("created_at")) or min(starts, default=finished)
    run = Run(model=str(record.get("model")), run_id=str(record.get("run_id")), outcome=str(outcome),
              started_at=min(started, finished), finished_at=finished, kind=kind, dag_id=record.get("dag_id"),
              version=(record.get("artifact") or {}).get("version"))
    if kind == "rollback":
        return _rollback_run(run, stages)
    fields: dict[str, Any] = {"deployed": (stages.get("deploy_staging") or {}).get("status") == "success"}
    if outcome in FAILURE_OUTCOMES:
        fields["failed_at"] = _failed_at(stages, finished)
    rollback = stages.get("rollback") or {}
    if outcome == "rolled-back" and rollback.get("status") == "success":
        fields["restored_at"] = stage_end(rollback)
    if outcome == "released":
        fields["deployed_at"] = stage_end(stages.get("promote")) or finished
        fields["deployed"] = fields["deployed"] and (record.get("gate") or {}).get("verdict") != "no-change"
        build_start = parse_time((stages.get("build") or {}).get("started_at")) or run.started_at
        fields["change_at"], fields["change_source"] = _change_at(record, commit_time, build_start)
    return Run(**{**asdict(run), **fields})


def _rollback_run(run: Run, stages: dict[str, dict[str, Any]]) -> Run:
    target = (stages.get("resolve") or {}).get("result") or {}
    fields: dict[str, Any] = {"version": target.get("version") or run.version}
    if run.outcome == "reverted":
        fields.update(failed_at=run.started_at, restored_at=stage_end(stages.get("promote")) or run.finished_at,
                      reverted_version=target.get("from_version"))
    elif run.outcome == "failed":
        fields["failed_at"] = _failed_at(stages, run.finished_at)
    return Run(**{**asdict(run), **fields})


def read_records(store: ArtifactStore, model: str) -> list[dict[str, Any]]:
    """Every ``release.json`` of a model in the store (unreadable ones are skipped)."""
    from model_delivery.store.records import read_records as read

    return read(store, model)


def store_models(store: ArtifactStore) -> list[str]:
    """Model names that have a folder in the store (a retired model's history still counts)."""
    return store.layout.models()


def git_commit_time(sha: str) -> datetime | None:
    """The commit time of ``sha`` in the project checkout; None when git or the commit is not there."""
    import subprocess

    from model_delivery.settings import PROJECT_ROOT

    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "show", "-s", "--format=%cI", sha],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_time(out)


# -- Airflow's own metadata -------------------------------------------------------------------------------


def model_of_dag_run(dag_run: dict[str, Any]) -> str | None:
    """The model a DAG run delivered: ``release__<model>``, or a ``model_rollback`` run's conf."""
    dag_id = str(dag_run.get("dag_id") or "")
    if dag_id.startswith(RELEASE_PREFIX):
        return dag_id.removeprefix(RELEASE_PREFIX)
    if dag_id == ROLLBACK_DAG:
        model = (dag_run.get("conf") or {}).get("model")
        return str(model) if model else None
    return None


def runs_without_record(dag_runs: Iterable[dict[str, Any]], known: set[tuple[str, str]]) -> list[Run]:
    """Failed DAG runs that left no release record (the run died before ``record``): failures too."""
    found = []
    for dag_run in dag_runs:
        model = dag_run.get("model") or model_of_dag_run(dag_run)
        end = parse_time(dag_run.get("end_date"))
        if not model or end is None or dag_run.get("state") != "failed" or (model, dag_run["run_id"]) in known:
            continue
        start = parse_time(dag_run.get("start_date")) or end
        found.append(Run(model=model, run_id=dag_run["run_id"], outcome="failed", started_at=min(start, end),
                         finished_at=end, failed_at=end, dag_id=dag_run.get("dag_id"), source="airflow",
                         kind="rollback" if dag_run.get("dag_id") == ROLLBACK_DAG else "release"))
    return found


def airflow_figures(history: dict[str, Any], *, end: datetime, days: float, model: str | None = None) -> dict[str, Any]:
    """DAG run and task instance counts for a scope and window, from Airflow's metadata."""
    start = end - timedelta(days=days)
    runs = [
        r for r in history.get("dag_runs", [])
        if (model is None or r.get("model") == model)
        and (t := parse_time(r.get("end_date"))) is not None and start < t <= end
    ]
    keys = {(r["dag_id"], r["run_id"]) for r in runs}
    tis = [ti for ti in history.get("task_instances", []) if (ti.get("dag_id"), ti.get("run_id")) in keys]
    durations = [
        (e - s).total_seconds()
        for r in runs
        if (s := parse_time(r.get("start_date"))) is not None and (e := parse_time(r.get("end_date"))) is not None
    ]
    states: dict[str, int] = {}
    for r in runs:
        states[str(r.get("state"))] = states.get(str(r.get("state")), 0) + 1
    return {
        "dag_runs": len(runs),
        "dag_run_states": dict(sorted(states.items())),
        "mean_run_seconds": statistics.fmean(durations) if durations else None,
        "task_instances": len(tis),
        "task_failures": sum(1 for ti in tis if ti.get("state") == "failed"),
        "task_retries": sum(max(0, int(ti.get("try_number") or 0) - 1) for ti in tis),
    }


def _paged(client: Any, path: str, key: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        response = client.get(path, params={**params, "limit": 100, "offset": len(items)})
        response.raise_for_status()
        body = response.json()
        items.extend(body[key])
        if not body[key] or len(items) >= int(body.get("total_entries", 0)):
            return items


def fetch_airflow_history(client: Any, since: datetime) -> dict[str, Any]:
    """Release and rollback DAG runs ended since ``since``, with their task instances, via the REST API."""
    dag_runs = []
    for dag_run in _paged(client, "/api/v2/dags/~/dagRuns", "dag_runs",
                          {"end_date_gte": since.isoformat(), "order_by": "end_date"}):
        model = model_of_dag_run(dag_run)
        if model:
            dag_runs.append({"model": model, **{k: dag_run.get(k) for k in
                                                ("dag_id", "run_id", "state", "start_date", "end_date")},
                             "run_id": dag_run.get("dag_run_id") or dag_run.get("run_id")})
    keys = {(r["dag_id"], r["run_id"]) for r in dag_runs}
    task_instances = [
        {"dag_id": ti.get("dag_id"), "run_id": ti.get("dag_run_id"), "task_id": ti.get("task_id"),
         "state": ti.get("state"), "try_number": ti.get("try_number")}
        for ti in _paged(client, "/api/v2/dags/~/dagRuns/~/taskInstances", "task_instances",
                         {"end_date_gte": since.isoformat(), "order_by": "id"})
        if (ti.get("dag_id"), ti.get("dag_run_id")) in keys
    ]
    return {"dag_runs": dag_runs, "task_instances": task_instances}


def api_conn_id() -> str:
    """The Airflow connection holding the REST API's URL and credentials (``MODEL_DELIVERY_AIRFLOW_API_CONN_ID``)."""
    return os.environ.get("MODEL_DELIVERY_AIRFLOW_API_CONN_ID", "model_delivery_airflow_api")


def airflow_api_client(conn_id: str) -> Any:
    """An authenticated httpx client for Airflow's REST API, from an http connection (host, login, password)."""
    from airflow.sdk import BaseHook

    from model_delivery.ci import _client

    conn = BaseHook.get_connection(conn_id)
    host = str(conn.host or "")
    if "://" in host:
        url = host.rstrip("/") + (f":{conn.port}" if conn.port else "")
    else:
        url = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
    return _client(url, None, conn.login, conn.password)


def read_airflow_history(since: datetime, conn_id: str | None = None) -> dict[str, Any]:
    """Airflow's metadata through the REST API; ``available: false`` with the reason when it cannot be read."""
    conn_id = conn_id or api_conn_id()
    try:
        with airflow_api_client(conn_id) as client:
            return {"available": True, "conn_id": conn_id, **fetch_airflow_history(client, since)}
    except Exception as exc:  # noqa: BLE001 - the records alone still give every figure
        return {"available": False, "conn_id": conn_id, "dag_runs": [], "task_instances": [],
                "note": f"Airflow metadata not read ({type(exc).__name__}: {exc}). Add the http connection "
                        f"{conn_id!r} with the API URL, login and password (docs/metrics.md)."}


# -- the whole computation -------------------------------------------------------------------------------


def compute(runs: list[Run], *, end: datetime, models: Iterable[str], coverage: dict[str, Any] | None = None,
            airflow: dict[str, Any] | None = None, windows: Iterable[int] = WINDOWS) -> dict[str, Any]:
    """The metrics document: per window, overall and per model, plus coverage and Airflow's counts."""
    models = sorted(set(models) | {r.model for r in runs})
    coverage = coverage or {}
    document: dict[str, Any] = {
        "generated_at": end.isoformat(),
        "definitions": "docs/metrics.md",
        "models": models,
        "coverage": {"project": coverage.get("project") or {"coverage": None, "note": "not measured"},
                     "models": {m: (coverage.get("models") or {}).get(m) or {"coverage": None, "note": "not measured"}
                                for m in models}},
        "airflow": {k: v for k, v in (airflow or {"available": False, "note": "not read"}).items()
                    if k not in ("dag_runs", "task_instances")},
        "windows": {},
        "runs": [r.to_dict() for r in sorted(runs, key=lambda r: r.finished_at)],
    }
    for days in windows:
        window: dict[str, Any] = {"overall": figures(runs, end=end, days=days), "models": {}}
        if airflow and airflow.get("available"):
            window["overall"]["airflow"] = airflow_figures(airflow, end=end, days=days)
        for model in models:
            window["models"][model] = figures(runs, end=end, days=days, model=model)
            if airflow and airflow.get("available"):
                window["models"][model]["airflow"] = airflow_figures(airflow, end=end, days=days, model=model)
        document["windows"][str(days)] = window
    return document


HISTORY_COLUMNS = (
    "generated_at", "window_days", "scope", "runs", "failures", "observed_days", "failure_rate_per_day",
    "mttf_seconds", "mttr_seconds", "open_failures", "deployments", "deployment_frequency_per_day",
    "lead_time_median_seconds", "lead_time_mean_seconds", "change_failure_rate", "changes_needing_rollback",
    "changes_deployed", "rejections", "coverage",
)


def history_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The CSV rows of one computation: one per window and scope (``all`` or a model); empty cells for None."""
    rows = []
    coverage = document["coverage"]
    for days, window in document["windows"].items():
        scopes = [("all", window["overall"], coverage["project"]),
                  *((m, f, coverage["models"].get(m) or {}) for m, f in window["models"].items())]
        for scope, f, cov in scopes:
            row = {"generated_at": document["generated_at"], "window_days": days, "scope": scope,
                   "lead_time_median_seconds": f["lead_time_seconds"]["median"],
                   "lead_time_mean_seconds": f["lead_time_seconds"]["mean"], "coverage": cov.get("coverage")}
            row.update({c: f[c] for c in HISTORY_COLUMNS if c in f})
            rows.append({c: ("" if row.get(c) is None else row[c]) for c in HISTORY_COLUMNS})
    return rows


def metrics_dir(store: ArtifactStore) -> ObjectStoragePath:
    return store.layout.metrics()


def write_outputs(store: ArtifactStore, document: dict[str, Any]) -> dict[str, str]:
    """Write ``latest.json`` and append to ``history.csv`` (rewritten whole: object stores cannot append)."""
    directory = metrics_dir(store)
    store.write_json(directory / LATEST, document)
    history = directory / HISTORY
    existing = history.read_text() if history.exists() else ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    if not existing:
        writer.writeheader()
    writer.writerows(history_rows(document))
    store.write_text(history, existing + out.getvalue())
    return {"latest": str(directory / LATEST), "history": str(history)}


def read_latest(store: ArtifactStore) -> dict[str, Any] | None:
    """The latest metrics document, or None when the metrics DAG has not run yet."""
    path = metrics_dir(store) / LATEST
    if not path.exists():
        return None
    document: dict[str, Any] = json.loads(path.read_text())
    return document


# -- the DAG's tasks -------------------------------------------------------------------------------------


def measure_coverage() -> dict[str, Any]:
    """Task: the project's coverage (from ``make test``) and each model's build code under its own tests."""
    from model_delivery.settings import get_settings
    from model_delivery.spec import discover_specs

    settings = get_settings()
    specs, _ = discover_specs(settings.models_dir)
    return {"project": project_coverage(), "models": {name: model_coverage(settings.models_dir / name) for name in specs}}


def compute_delivery_metrics(coverage: dict[str, Any] | None = None, *, end: datetime | None = None,
                             outlet_events: Any = None, **_: Any) -> dict[str, Any]:
    """Task: gather the runs, compute every figure, write JSON and CSV, and describe the asset event."""
    from model_delivery.settings import get_settings
    from model_delivery.spec import discover_specs

    settings = get_settings()
    store = settings.open_store()
    end = end or datetime.now(UTC)
    models = set(discover_specs(settings.models_dir)[0]) | set(store_models(store))
    runs = [run for model in sorted(models) for record in read_records(store, model)
            if (run := run_from_record(record, git_commit_time)) is not None]
    airflow = read_airflow_history(end - timedelta(days=max(WINDOWS)))
    airflow["dag_runs"] = [r for r in airflow["dag_runs"] if r["model"] in models]  # this installation's models
    runs += runs_without_record(airflow["dag_runs"], {(r.model, r.run_id) for r in runs})
    document = compute(runs, end=end, models=models, coverage=coverage, airflow=airflow)
    paths = write_outputs(store, document)
    summary = {**paths, "generated_at": document["generated_at"], "runs": len(runs),
               "airflow_metadata": document["airflow"].get("available", False)}
    if outlet_events is not None:
        from airflow.sdk import Asset

        outlet_events[Asset(ASSET_URI)].extra = summary
    return summary


# -- display helpers (the page and the report) ------------------------------------------------------------


def human_duration(seconds: float | None) -> str:
    """``3.2 h``, ``45 s``, ``2.0 d``; an em dash for None."""
    if seconds is None:
        return "—"
    for unit, size in (("d", DAY), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
