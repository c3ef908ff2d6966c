"""DeployModelOperator: start the candidate beside production, or shift traffic to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext

STEPS = ("staging", "production")


class DeployModelOperator(ReleaseStageOperator):
    """Deploy through the spec's target (``local`` runs blue-green on this machine).

    :param model: the model.
    :param candidate: the build stage's result (templated).
    :param step: ``staging`` starts the candidate without traffic; ``production`` shifts traffic to it.
    """

    template_fields = ("candidate",)
    ui_color = "#d5f5e3"

    def __init__(self, *, candidate: Any, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        self.candidate = candidate
        self.step = step

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import deploy_production, deploy_staging

        if self.step == "staging":
            return deploy_staging(rc, self.candidate)
        return deploy_production(rc)
