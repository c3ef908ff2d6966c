"""RetireModelOperator: free the previous deployment once the candidate is promoted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class RetireModelOperator(ReleaseStageOperator):
    """Stop the version kept warm for rollback, then give the deploy lease back.

    It runs after ``promote`` and is not on the rollback's path: the release is verified and
    promoted, so a failed retire leaves an extra warm server (reported in the record), never
    a rolled-back release.

    :param model: the model.
    """

    ui_color = "#d6eaf8"

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import retire

        return retire(rc)
