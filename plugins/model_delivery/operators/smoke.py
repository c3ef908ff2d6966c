"""SmokeTestModelOperator: golden requests, checks on the answers, a latency budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class SmokeTestModelOperator(ReleaseStageOperator):
    """Send the spec's golden requests to a deployment and check every answer.

    :param model: the model.
    :param candidate: the build stage's result (templated); the answers must come from its digest.
    :param deployment: a deploy stage's result with its ``url`` (templated).
    """

    template_fields = ("model", "candidate", "deployment")

    def __init__(self, *, candidate: Any, deployment: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate = candidate
        self.deployment = deployment

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import smoke

        return smoke(rc, self.candidate, self.deployment)
