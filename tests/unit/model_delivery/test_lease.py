"""The deploy lease: one run at a time changes what serves a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_delivery.lease import DeployBusy, DeployLease


def test_a_second_run_is_refused_while_the_first_is_live(tmp_path: Path) -> None:
    lease = DeployLease(tmp_path, finished=lambda run_id: False)
    first = lease.acquire("run-a", "release__m")
    assert first["run_id"] == "run-a"
    assert lease.acquire("run-a", "release__m") == first  # idempotent for the holder

    with pytest.raises(DeployBusy, match="release__m run run-a is deploying this model"):
        lease.acquire("run-b", "model_rollback")

    assert lease.release("run-b") is False
    assert lease.release("run-a") is True
    assert lease.holder() is None
    assert lease.acquire("run-b", "model_rollback")["run_id"] == "run-b"


def test_a_finished_holder_is_taken_over(tmp_path: Path) -> None:
    done = {"run-a"}
    lease = DeployLease(tmp_path, finished=lambda run_id: run_id in done)
    lease.acquire("run-a", "release__m")

    taken = lease.acquire("run-b", "release__m")

    assert taken["run_id"] == "run-b" and taken["took_over"] == "run-a"
    assert DeployLease(tmp_path, finished=lambda run_id: False).holder()["run_id"] == "run-b"
