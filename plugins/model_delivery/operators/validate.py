"""ValidateDataOperator: Great Expectations suite, schema and drift on the build's data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class ValidateDataOperator(ReleaseStageOperator):
    """Validate the training and evaluation data before the model is measured.

    Runs the spec's GX suite (GX 1.x, ephemeral context) on both data sets, checks their
    schema and drift against the spec's reference data, saves the full GX results beside
    the release record, and fails (no retry) when anything is wrong. The summary is
    pushed to XCom before the task fails.

    :param model: the model.
    :param candidate: the build stage's result (templated).
    """

    template_fields = ("model", "candidate")
    ui_color = "#fcf3cf"

    def __init__(self, *, candidate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate = candidate

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import validate_data

        return validate_data(rc, self.candidate)
