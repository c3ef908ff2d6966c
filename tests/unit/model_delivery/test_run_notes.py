"""The release's outcome as its Airflow run note: the text, and which runs get one."""

from __future__ import annotations

import pytest

from model_delivery.run_notes import NOTE_LIMIT, model_of, note_text


@pytest.mark.parametrize(("dag_id", "conf", "model"), [
    ("release__wine", {}, "wine"),
    ("model_rollback", {"model": "wine", "version": "previous"}, "wine"),
    ("model_rollback", {}, None),
    ("delivery_metrics", {}, None),
    ("release__", {}, None),
])
def test_only_release_and_rollback_runs_are_noted(dag_id: str, conf: dict, model: str | None) -> None:
    assert model_of(dag_id, conf) == model


def test_the_note_says_the_outcome_why_and_who_asked() -> None:
    record = {"outcome": "rolled-back", "reasons": ["smoke: answer 7 expected, got 1", "rollback: restored v1"],
              "triggered_by": "ana", "conf": {"reason": "weekly retrain"}}
    assert note_text(record) == ('rolled-back: smoke: answer 7 expected, got 1 (+1 more) · asked by ana: '
                                 '"weekly retrain"')
    assert note_text({"outcome": "released", "reasons": []}) == "released"


def test_a_persons_note_is_kept_and_the_trigger_reason_not_repeated() -> None:
    record = {"outcome": "no-change", "reasons": ["production already is v3"], "conf": {"reason": "nightly"}}
    assert note_text(record, "nightly") == 'no-change: production already is v3 · asked: "nightly"'
    assert note_text(record, "look at the drift") .endswith("· note: look at the drift")


def test_a_long_note_fits_airflows_column() -> None:
    note = note_text({"outcome": "failed", "reasons": ["x" * 5000]})
    assert len(note) == NOTE_LIMIT and note.endswith("…")
