"""BuildModelOperator: run the spec's build entrypoint and store the artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class BuildModelOperator(ReleaseStageOperator):
    """Build the model in an isolated process, store it by digest, register a version.

    Pushes ``{"digest", "uri", "version", "data", ...}``: only URIs and digests, never bytes.

    :param model: the model to build.
    """

    ui_color = "#d6eaf8"

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import build

        return build(rc)
