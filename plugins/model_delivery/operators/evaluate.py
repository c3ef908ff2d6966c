"""EvaluateModelOperator: metrics on held-out data, logged to MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class EvaluateModelOperator(ReleaseStageOperator):
    """Measure the candidate through the serving loader on the build's evaluation data.

    :param model: the model.
    :param candidate: the build stage's result (templated; pass ``build.output``).
    """

    template_fields = ("model", "candidate")

    def __init__(self, *, candidate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate = candidate

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import evaluate

        return evaluate(rc, self.candidate)
