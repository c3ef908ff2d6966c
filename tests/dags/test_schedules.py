"""Schedules: cron with a timezone and no catch-up, asset triggers, and the example data refresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.models import copy_models, edit_spec
from tests.helpers.release import get_dag, release_env


def test_cron_schedule_runs_in_the_spec_timezone_without_catchup(tmp_path: Path, airflow_db: Path) -> None:
    with release_env(tmp_path, ("wine",)) as models:
        edit_spec(models / "wine", lambda s: s.update(schedule="0 3 * * *", timezone="Europe/Paris"))
        dag = get_dag("release__wine")

    from airflow.sdk import CronTriggerTimetable

    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "0 3 * * *"
    assert str(dag.timetable.timezone) == "Europe/Paris"
    assert dag.catchup is False


def test_asset_and_cron_together(tmp_path: Path, airflow_db: Path) -> None:
    with release_env(tmp_path, ("wine",)) as models:
        edit_spec(models / "wine", lambda s: s.update(schedule="0 3 * * *", trigger_on="model-delivery://data/wine"))
        dag = get_dag("release__wine")

    from airflow.sdk import AssetOrTimeSchedule

    assert isinstance(dag.timetable, AssetOrTimeSchedule)


@pytest.mark.parametrize(("change", "field"), [
    pytest.param({"schedule": "every night"}, "schedule", id="bad-cron"),
    pytest.param({"timezone": "Mars/Olympus"}, "timezone", id="bad-timezone"),
    pytest.param({"trigger_on": "just-a-name"}, "trigger_on", id="bad-asset"),
])
def test_bad_schedule_fields_are_spec_errors(tmp_path: Path, change: dict, field: str) -> None:
    from model_delivery.exceptions import InvalidModelSpec
    from model_delivery.spec import load_spec

    models = copy_models(tmp_path / "models", ("wine",))
    edit_spec(models / "wine", lambda s: s.update(change))
    with pytest.raises(InvalidModelSpec, match=f"field '{field}'"):
        load_spec(models / "wine")


def test_data_refresh_event_triggers_a_release_run(tmp_path: Path, airflow_db: Path) -> None:
    """The example refresh emits the asset event; the scheduler's own code turns it into a release run.

    The model is a copy of wine under a name no other test uses (``asset_wine``), so no other test's
    serialization of its DAG (or a queued run, held back by max_active_runs=1) can interfere.
    """
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit

    from tests.conftest import run_airflow

    with release_env(tmp_path, ("wine",)) as models:
        uri = "model-delivery://data/asset_wine-test"
        (models / "wine").rename(models / "asset_wine")
        edit_spec(models / "asset_wine", lambda s: s.update(name="asset_wine", trigger_on=uri, schedule=None))
        env = {"MODEL_DELIVERY_MODELS_DIR": str(models)}
        assert run_airflow("dags", "reserialize", env=env, check=False).returncode == 0
        run_airflow("dags", "unpause", "release__asset_wine", env=env)
        refresh = get_dag("data_refresh__asset_wine").test()
        assert refresh.state == "success"

        import time

        for _ in range(10):  # a few scheduler loops, as a running scheduler would do
            with create_session() as session, prohibit_commit(session) as guard:
                SchedulerJobRunner(job=Job())._create_dagruns_for_dags(guard, session)
            with create_session() as session:
                if session.query(DagRun).filter_by(dag_id="release__asset_wine", run_type="asset_triggered").count():
                    break
            time.sleep(1)
        with create_session() as session:
            runs = session.query(DagRun).filter_by(dag_id="release__asset_wine", run_type="asset_triggered").all()
            assert len(runs) == 1
            events = runs[0].consumed_asset_events
            assert [e.asset.uri for e in events] == [uri]
            assert events[0].extra["model"] == "asset_wine"
        run_airflow("dags", "pause", "release__asset_wine", env=env)
