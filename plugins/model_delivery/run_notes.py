"""The release's outcome as its Airflow run note, so that the Grid tells the story without opening a log.

Airflow 3 gives a task no way to set its own run's note (the execution API has no call for it, and
tasks never touch the metadata DB). The scheduler does: when it decides a run's final state it calls
the ``on_dag_run_success`` / ``on_dag_run_failed`` listener hooks in its own process, with the run
attached to its session. :class:`RunNotes` (registered by the plugin) then reads the run's release
record from the store and sets the note, in the scheduler's transaction, exactly as the UI's
"add a note" does. ``dag.test()`` decides the state in the calling process and so notes too.

The note is one line: ``rolled-back: smoke: ... · asked by admin: "weekly retrain"``. A note a
person wrote before the run ended (or the trigger's note, which the releases page sets to the reason)
is kept after the outcome. Anything that goes wrong here is logged and never fails the scheduler.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun

log = logging.getLogger(__name__)

NOTE_LIMIT = 1000
"""Airflow's ``dag_run_note.content`` is a VARCHAR(1000)."""
ROLLBACK_DAG = "model_rollback"
RELEASE_PREFIX = "release__"


def model_of(dag_id: str, conf: dict[str, Any] | None) -> str | None:
    """The model a run of ``dag_id`` is about: ``release__<model>``, or the rollback's ``model`` conf; else None."""
    if dag_id.startswith(RELEASE_PREFIX):
        return dag_id.removeprefix(RELEASE_PREFIX) or None
    if dag_id == ROLLBACK_DAG:
        model = (conf or {}).get("model")
        return model if isinstance(model, str) and model else None
    return None


def note_text(record: dict[str, Any], earlier: str | None = None) -> str:
    """One line: the outcome and its first reason, who asked and why; ``earlier`` (a person's note) kept after it."""
    reasons = [str(r) for r in record.get("reasons") or []]
    text = str(record.get("outcome") or "unknown")
    if reasons:
        text += f": {reasons[0]}" + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")
    who = record.get("triggered_by")
    why = str((record.get("conf") or {}).get("reason") or "")
    if who or why:
        text += " · asked" + (f" by {who}" if who else "") + (f': "{why}"' if why else "")
    if earlier and earlier.strip() and earlier.strip() != why:
        text += f" · note: {earlier.strip()}"
    text = " ".join(text.split())
    return text if len(text) <= NOTE_LIMIT else text[: NOTE_LIMIT - 1] + "…"


def _record(model: str, run_id: str) -> dict[str, Any] | None:
    """The run's release record, or None when it has none (yet)."""
    from model_delivery.records import ReleaseRecord
    from model_delivery.settings import get_settings

    record = ReleaseRecord(get_settings().open_store(), model, run_id)
    return record.load() if record.path.exists() else None


def note_outcome(dag_run: DagRun) -> str | None:
    """Note the run's outcome from its release record; the note (or None: not a release, or no outcome yet).

    In the scheduler the run is attached to the scheduler's session: the note joins its transaction. Elsewhere
    (``dag.test()``) the run is detached and its state not yet committed: a thread writes the note in a session
    of its own once the run's final state is in the DB (a second writer now would wait on the first).
    """
    try:
        from sqlalchemy.orm import object_session

        model = model_of(dag_run.dag_id, dag_run.conf if isinstance(dag_run.conf, dict) else None)
        if model is None:
            return None
        record = _record(model, dag_run.run_id)
        if not record or not record.get("outcome"):
            return None
        if object_session(dag_run) is not None:
            return _set_note(dag_run, record)
        thread = threading.Thread(target=_note_when_committed, args=(dag_run.dag_id, dag_run.run_id, record),
                                  name=f"run-note-{dag_run.run_id}", daemon=True)
        thread.start()
        return note_text(record)
    except Exception:  # noqa: BLE001 - a note must never fail the scheduler
        log.exception("could not note the outcome of %s", getattr(dag_run, "run_id", "?"))
        return None


def _set_note(dag_run: Any, record: dict[str, Any]) -> str:
    earlier = dag_run.note
    if earlier and str(earlier).startswith(str(record["outcome"])):
        return str(earlier)  # already noted (a run decided twice)
    dag_run.note = note_text(record, earlier)
    return str(dag_run.note)


def _note_when_committed(dag_id: str, run_id: str, record: dict[str, Any], attempts: int = 120) -> None:
    try:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState

        for _ in range(attempts):
            with create_session() as session:
                run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one_or_none()
                if run is not None and run.state in (DagRunState.SUCCESS, DagRunState.FAILED):
                    _set_note(run, record)
                    return
            time.sleep(0.25)
        log.warning("run %s of %s never reached a final state in the DB: not noted", run_id, dag_id)
    except Exception:  # noqa: BLE001
        log.exception("could not note the outcome of %s", run_id)


class RunNotes:
    """The listener the plugin registers."""

    @hookimpl
    def on_dag_run_success(self, dag_run: DagRun, msg: str) -> None:
        note_outcome(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: DagRun, msg: str) -> None:
        note_outcome(dag_run)


run_notes = RunNotes()
