"""The deploy lease: one run at a time may change what serves a model.

A release and a manual rollback of the same model must never deploy at once. The lease
is taken when a run first changes the deployment (``deploy_staging``) and given back when
it ends (``promote``, ``rollback`` or ``record``). It lives beside the deploy state in
``<MODEL_DELIVERY_HOME>/deploy/<model>/lease.json`` and is changed under ``flock``.

A lease whose holder has finished (its release record has an outcome) is stale and is
taken over, so a crashed run never blocks a model for good.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import ModelDeliveryError
from model_delivery.records import now
from model_delivery.statefile import exclusive, save_json

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


class DeployBusy(ModelDeliveryError):
    """Another run holds the deploy lease of this model; retrying later will succeed."""


class DeployLease:
    """The deploy lease of one model.

    :param state_dir: the model's deploy state directory.
    :param finished: tells whether a holder run (by run id) has finished.
    """

    def __init__(self, state_dir: Path, finished: Callable[[str], bool]) -> None:
        self.path = state_dir / "lease.json"
        self.finished = finished

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any] | None]:
        with exclusive(self.path.with_suffix(".lock")):
            yield json.loads(self.path.read_text()) if self.path.exists() else None

    def _write(self, lease: dict[str, Any] | None) -> None:
        if lease is None:
            self.path.unlink(missing_ok=True)
            return
        save_json(self.path, lease)

    def acquire(self, run_id: str, dag_id: str) -> dict[str, Any]:
        """Take the lease for ``run_id`` (idempotent); raise ``DeployBusy`` if a live run holds it."""
        with self._locked() as held:
            if held and held["run_id"] != run_id and not self.finished(held["run_id"]):
                raise DeployBusy(
                    f"{held['dag_id']} run {held['run_id']} is deploying this model since {held['since']}; "
                    "this run waits (the task retries) until that run ends."
                )
            lease = {"run_id": run_id, "dag_id": dag_id, "since": now(),
                     "took_over": held["run_id"] if held and held["run_id"] != run_id else None}
            if held and held["run_id"] == run_id:
                lease = held
            self._write(lease)
            return lease

    def release(self, run_id: str) -> bool:
        """Give the lease back if ``run_id`` holds it; True if it did."""
        with self._locked() as held:
            if held and held["run_id"] == run_id:
                self._write(None)
                return True
            return False

    def holder(self) -> dict[str, Any] | None:
        with self._locked() as held:
            return held
