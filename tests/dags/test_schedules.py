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


def _first_run_after(dag: object) -> object:
    """When the scheduler would create the first scheduled run of ``dag`` (never run), as it computes it."""
    from airflow.serialization.serialized_objects import DagSerialization

    info = DagSerialization.from_dict(DagSerialization.to_dict(dag)).next_dagrun_info(last_automated_run_info=None)
    assert info is not None
    return info.run_after


def test_unpausing_a_cron_dag_waits_for_the_next_cron_point(tmp_path: Path, airflow_db: Path) -> None:
    """Every minute: the cron point just passed is always within run_immediately=False's buffer (5 minutes),
    and with a start_date Airflow ignores run_immediately; either would start a run on unpause."""
    from datetime import UTC, datetime, timedelta

    from airflow.sdk import DAG, CronTriggerTimetable

    from model_delivery.dag_factory import START_DATE

    with release_env(tmp_path, ("wine",)) as models:
        edit_spec(models / "wine", lambda s: s.update(schedule="* * * * *", timezone="Europe/Paris"))
        dag = get_dag("release__wine")

    assert dag.start_date is None
    assert dag.timetable.run_immediately == timedelta(0)
    now = datetime.now(UTC)
    assert now < _first_run_after(dag) <= now + timedelta(minutes=1)

    # What the DAG was: a start_date, so the first run is the cron point just passed, due at once on unpause.
    with DAG("was", schedule=CronTriggerTimetable("* * * * *", timezone="Europe/Paris"), start_date=START_DATE,
             catchup=False) as was:
        pass
    assert _first_run_after(was) <= datetime.now(UTC)


def test_a_dag_without_cron_keeps_its_start_date(tmp_path: Path, airflow_db: Path) -> None:
    from model_delivery.dag_factory import START_DATE

    with release_env(tmp_path, ("wine",)) as models:
        edit_spec(models / "wine", lambda s: s.update(schedule=None))
        dag = get_dag("release__wine")
    assert dag.start_date is not None and dag.start_date.replace(tzinfo=None) == START_DATE


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


def test_the_scheduler_starts_no_run_when_a_cron_release_dag_is_unpaused(tmp_path: Path, airflow_db: Path) -> None:
    """The scheduler's own code, right after unpausing: no scheduled run for the cron point 2 minutes ago (the one
    Airflow would take with a start_date, or with run_immediately=False: within 5 minutes), and the next run at
    the next cron point, about 58 minutes away. A model name no other test uses (``cron_wine``)."""
    from datetime import UTC, datetime, timedelta

    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit

    from tests.conftest import run_airflow

    now = datetime.now(UTC)
    minute = (now - timedelta(minutes=2)).minute  # hourly, last at 2 (to 3) minutes ago
    with release_env(tmp_path, ("wine",)) as models:
        (models / "wine").rename(models / "cron_wine")
        edit_spec(models / "cron_wine", lambda s: s.update(name="cron_wine", schedule=f"{minute} * * * *",
                                                           timezone="UTC", trigger_on=None))
        env = {"MODEL_DELIVERY_MODELS_DIR": str(models)}
        assert run_airflow("dags", "reserialize", env=env, check=False).returncode == 0
        run_airflow("dags", "unpause", "release__cron_wine", env=env)
        try:
            for _ in range(3):  # a few scheduler loops, as a running scheduler would do
                with create_session() as session, prohibit_commit(session) as guard:
                    SchedulerJobRunner(job=Job())._create_dagruns_for_dags(guard, session)
            with create_session() as session:
                assert session.query(DagRun).filter_by(dag_id="release__cron_wine").count() == 0
                model = session.get(DagModel, "release__cron_wine")
                assert model is not None and not model.is_paused
                next_run = model.next_dagrun_create_after
            assert next_run is not None
            assert next_run.minute == minute and now + timedelta(minutes=55) < next_run <= now + timedelta(minutes=58)
        finally:
            run_airflow("dags", "pause", "release__cron_wine", env=env)
