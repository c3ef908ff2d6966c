"""GateModelOperator: thresholds, failing closed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class GateModelOperator(ReleaseStageOperator):
    """Bless or reject the candidate; a rejection fails the task without retries.

    :param model: the model.
    :param candidate: the build stage's result (templated).
    :param evaluation: the evaluate stage's result (templated).
    """

    template_fields = ("model", "candidate", "evaluation")
    ui_color = "#fdebd0"

    def __init__(self, *, candidate: Any, evaluation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate = candidate
        self.evaluation = evaluation

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import gate

        return gate(rc, self.candidate, self.evaluation)
