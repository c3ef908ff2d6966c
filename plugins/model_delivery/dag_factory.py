"""Build one ``release__<model>`` DAG per model spec.

A broken spec does not take the other models down: its DAG is replaced by a
placeholder whose validation fails with the spec error, so ``airflow dags
list-import-errors`` shows that error (naming the model, file, field and fix) while
every valid model's DAG still loads from the same file.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param

from model_delivery.container_build import build_operator
from model_delivery.exceptions import InvalidModelSpec
from model_delivery.notify import ReleaseNotifier
from model_delivery.operators import (
    ApproveReleaseOperator,
    DeployModelOperator,
    EvaluateModelOperator,
    GateModelOperator,
    PromoteModelOperator,
    RecordReleaseOperator,
    RetireModelOperator,
    RollbackModelOperator,
    SmokeTestModelOperator,
    ValidateDataOperator,
)
from model_delivery.operators.record import RECORD_TASK, ReleaseOutcomeOperator
from model_delivery.release import MAX_REASON, check_conf, has_changes
from model_delivery.settings import get_settings
from model_delivery.spec import ModelSpec, discover_specs

if TYPE_CHECKING:
    from pathlib import Path

START_DATE = datetime(2026, 1, 1)
DEPLOY_TIMEOUT = timedelta(hours=2)
"""The ``execution_timeout`` of every task that changes what serves: a hung step is killed (its
``on_kill`` stops what it started) and the next task settles the journal."""
STAGE_DOC = """
### Stages
build → detect_change → validate_data → evaluate → gate → deploy_staging → smoke → (approve, when the spec requires it) →
deploy_production → verify → promote → retire;
any failure after a deploy started, up to promote → rollback. `record` always runs and writes
`release.json` and `report.md` under the artifact store's `{model}/releases/<run_id>/`; it is green
whenever it recorded. `outcome` comes last: it is green when the release is `released`, `no-change` or
`dry-run`, and otherwise fails the run with the outcome and its reasons (e.g. `release rolled-back: smoke: ...`)
and notifies the model's webhook.

### Trigger
UI: *Trigger DAG w/ config*. CLI:
`airflow dags trigger {dag_id} --conf '{{"reason": "weekly retrain"}}'`.
Every field is optional (null is the same as empty). `force: true` needs a non-empty `reason`: the form
cannot require one field because of another, so a forced run without a reason is refused by `build` in its
first seconds (and `model-delivery release --force` refuses it before triggering). `reason` and `force` are
recorded. `dry_run: true` runs every check and reports what the deploy would change, without changing anything.

### Schedule
With a cron `schedule`, runs start at the cron points in the spec's timezone, never to catch up. The DAG has
no `start_date` and its timetable `run_immediately=timedelta(0)`, so unpausing it (the trigger form's
*Unpause* box) creates no run: the first scheduled run is at the next cron point, and a manual run starts at
once instead of queuing behind a scheduled one (max_active_runs=1). A DAG that already ran on schedule and
was paused across a cron point still runs that latest missed point when unpaused (Airflow's catchup=False);
see docs/operations.md.
"""


OPTIONAL = "null"
"""In a param's ``type``: the field is optional. Airflow 3's trigger form marks a field required (a red ``*``,
an error badge while it is empty, Trigger disabled) unless its schema type is a list that includes "null"."""


def release_params() -> dict[str, Param]:
    """The release conf, validated by JSON schema before a run exists (keys: ``release.CONF_KEYS``).

    Every field is optional in the trigger form (its type allows null; null means the default, see
    ``release.CONF_DEFAULTS``). The rule JSON schema cannot state per field, ``force`` needs a ``reason``,
    is ``release.check_conf``'s, checked by the build task first and by ``model-delivery release``.
    """
    return {
        "reason": Param(
            None,
            type=[OPTIONAL, "string"],
            maxLength=MAX_REASON,
            title="Reason",
            description="Why this release is made; recorded in the release record. Optional, but required when "
            "Force is on: a forced run without a reason is refused in its first seconds.",
        ),
        "force": Param(
            False,
            type=[OPTIONAL, "boolean"],
            title="Force",
            description="Release even if the gate rejects the candidate (or nothing changed). Needs a Reason: "
            "a forced run without one is refused in its first seconds.",
        ),
        "dry_run": Param(
            False,
            type=[OPTIONAL, "boolean"],
            title="Dry run",
            description="Run every check, then report what the deploy would change (Ansible check mode, a "
            "Kubernetes server-side dry run, the local ports) and change nothing. The release ends as `dry-run`.",
        ),
    }


NOT_IMMEDIATELY = timedelta(0)
"""``run_immediately`` of the cron timetable: never run the cron point just passed when the DAG is first
scheduled (unpaused). ``False`` would not do: Airflow 3.3 treats it as ``None`` (run the past point if it is
within 10% of the cron period, at least 5 minutes, ago). It only applies to a DAG without ``start_date``."""


def release_schedule(spec: ModelSpec) -> Any:
    """The spec's cron schedule (timezone-aware), its asset trigger, both, or None (manual only).

    The cron timetable never runs the cron point that has just passed: with no ``start_date`` (see
    :func:`release_start_date`) and ``run_immediately=timedelta(0)``, unpausing the DAG schedules the
    next cron point, so a manual run triggered with *Unpause* is not queued behind a scheduled one.
    """
    cron = (CronTriggerTimetable(spec.schedule, timezone=spec.timezone, run_immediately=NOT_IMMEDIATELY)
            if spec.schedule else None)
    asset = Asset(spec.trigger_on) if spec.trigger_on else None
    if cron and asset:
        return AssetOrTimeSchedule(timetable=cron, assets=asset)
    return cron or ([asset] if asset else None)


def release_start_date(spec: ModelSpec) -> datetime | None:
    """None for a cron schedule: with catchup=False, Airflow 3.3's cron timetable takes the cron point just
    passed as the first run whenever the DAG has a ``start_date`` (``run_immediately`` is then ignored), so
    unpausing would start a release nobody asked for. Other DAGs keep ``START_DATE``."""
    return None if spec.schedule else START_DATE


def approval_minutes(spec: ModelSpec) -> float | None:
    """The approval timeout when the spec requires approval, else None."""
    return spec.approval_timeout_minutes if spec.approval == "required" else None


def deploy_chain(model: str, candidate: Any, *, approval_minutes: float | None = None) -> Any:
    """The deploy side of a release or a rollback, created inside the current DAG.

    deploy_staging → smoke → [approve] → deploy_production → verify → promote → retire, with
    ``rollback`` when any of them but retire fails, then ``record`` (green whenever it recorded) and
    ``outcome`` (fails with the outcome and its reasons when the release did not go out; notifies then).
    Every task that changes what serves has ``DEPLOY_TIMEOUT`` as its ``execution_timeout``.

    :param model: the model name, or a template such as ``{{ params.model }}``.
    :param candidate: what to deploy (an XComArg of a build-like result).
    :param approval_minutes: ask a person before production, with this timeout.
    :return: the ``deploy_staging`` task, to put after what must come first.
    """
    timeout = {"execution_timeout": DEPLOY_TIMEOUT}
    staging = DeployModelOperator(task_id="deploy_staging", model=model, candidate=candidate, step="staging", **timeout)
    smoke = SmokeTestModelOperator(task_id="smoke", model=model, candidate=candidate, deployment=staging.output)
    production = DeployModelOperator(task_id="deploy_production", model=model, candidate=candidate, step="production",
                                     **timeout)
    verify = SmokeTestModelOperator(task_id="verify", model=model, candidate=candidate, deployment=production.output)
    promote = PromoteModelOperator(task_id="promote", model=model, candidate=candidate)
    retire = RetireModelOperator(task_id="retire", model=model, **timeout)
    rollback = RollbackModelOperator(task_id="rollback", model=model, trigger_rule="one_failed", retries=2, **timeout)
    record = RecordReleaseOperator(task_id=RECORD_TASK, model=model, trigger_rule="all_done", retries=2)
    # A failed release raises ReleaseFailed, never retried: the notifier (on the final failure only) posts once.
    outcome = ReleaseOutcomeOperator(task_id="outcome", trigger_rule="all_done",
                                     on_failure_callback=ReleaseNotifier(model=model),
                                     doc_md="Fails the run with the release's outcome and reasons unless it is "
                                     "released, no-change, dry-run (or a rollback's reverted).")
    deploy_side: list[Any] = [staging, smoke, production, verify, promote]
    if approval_minutes is not None:
        approve = ApproveReleaseOperator(task_id="approve", model=model, timeout_minutes=approval_minutes, retries=0)
        smoke >> approve >> production
        deploy_side.append(approve)
    else:
        smoke >> production
    verify >> promote >> retire
    deploy_side >> rollback
    [promote, retire, rollback] >> record >> outcome
    return staging


class ReleaseDAG(DAG):
    """A release DAG: ``dag.test`` (and so ``airflow dags test``) refuses a conf that is not a JSON object.

    Airflow stores a conf of ``[]``, ``0`` or ``""`` as ``{}``, so no task can tell it from no conf; the REST API
    and ``airflow dags trigger`` already refuse anything but an object.
    """

    def test(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        run_conf = kwargs.get("run_conf")
        if run_conf is not None and not isinstance(run_conf, dict):
            check_conf(run_conf)  # raises InvalidConf; the other rules are the build task's first step
        return super().test(*args, **kwargs)


def release_dag(spec: ModelSpec) -> DAG:
    """The release DAG of one model."""
    name = spec.name
    with ReleaseDAG(
        dag_id=spec.dag_id,
        description=f"Release {name}: build, evaluate, gate, deploy, smoke, promote or roll back",
        doc_md=f"## Release `{name}`\n\n{spec.description}\n" + STAGE_DOC.format(model=name, dag_id=spec.dag_id),
        schedule=release_schedule(spec),
        start_date=release_start_date(spec),
        catchup=False,
        max_active_runs=1,
        tags=["model-delivery", "release", f"model:{name}", *spec.tags],
        params=release_params(),
        default_args={"owner": spec.owner, "retries": spec.retries, "retry_delay": timedelta(seconds=30)},
    ) as dag:
        build = build_operator(spec)(task_id="build", model=name)  # in a container when build.container names one
        candidate: Any = build.output
        detect = ShortCircuitOperator(
            task_id="detect_change",
            python_callable=has_changes,
            op_kwargs={"build": candidate},
            ignore_downstream_trigger_rules=False,
            doc_md="Ends the release early as `no-change` when production already is this version, built from "
            "the same spec and data (unless `force`).",
        )
        validate = ValidateDataOperator(task_id="validate_data", model=name, candidate=candidate)
        detect >> validate
        evaluate = EvaluateModelOperator(task_id="evaluate", model=name, candidate=candidate)
        validate >> evaluate
        gate = GateModelOperator(task_id="gate", model=name, candidate=candidate, evaluation=evaluate.output)
        staging = deploy_chain(name, candidate, approval_minutes=approval_minutes(spec))
        gate >> staging
    return dag


class BrokenSpecs(DAG):
    """Placeholder for models whose spec does not load; fails DAG validation with their errors."""

    spec_errors: dict[str, str] = {}

    def validate(self) -> None:
        details = "\n".join(f"model {name!r}: {error}" for name, error in sorted(self.spec_errors.items()))
        raise InvalidModelSpec(
            f"{len(self.spec_errors)} model spec(s) failed to load; their release DAGs are not available "
            f"(other models are unaffected):\n{details}"
        )


def release_dags(models_dir: Path | None = None) -> dict[str, DAG]:
    """Every model's release DAG by dag_id, plus one placeholder carrying spec errors if any."""
    specs, errors = discover_specs(models_dir or get_settings().models_dir)
    dags: dict[str, DAG] = {spec.dag_id: release_dag(spec) for spec in specs.values()}
    if errors:
        broken = BrokenSpecs(dag_id="model_delivery__broken_specs", schedule=None, start_date=START_DATE)
        broken.spec_errors = errors
        dags[broken.dag_id] = broken
    return dags
