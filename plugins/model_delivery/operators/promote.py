"""PromoteModelOperator: tag the version with its run's lineage, then move the registry aliases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class PromoteModelOperator(ReleaseStageOperator):
    """Make the candidate ``production`` (the old one becomes ``previous``).

    :param model: the model.
    :param candidate: the build stage's result (templated).
    """

    template_fields = ("model", "candidate")
    ui_color = "#abebc6"

    def __init__(self, *, candidate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate = candidate

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import promote

        return promote(rc, self.candidate)
