"""What the fault-injection suites share: a kill point, and what Airflow does after it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    step: str  # the step killed: stage, shift, retire, rollback
    kill: str  # where in it
    then: str  # what Airflow does next: "rollback" (the rollback task), or "retry" (the step again, then on)

    @property
    def rolls_back(self) -> bool:
        """The kill ends in a rollback (the rollback task runs, or the step killed was the rollback)."""
        return self.then == "rollback" or self.step == "rollback"
