"""ResolveRollbackOperator: which version a manual rollback goes to, refused before anything changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_delivery.operators.base import ReleaseStageOperator

if TYPE_CHECKING:
    from model_delivery.release import ReleaseContext


class ResolveRollbackOperator(ReleaseStageOperator):
    """Resolve ``version`` (a number, or ``previous``) of ``model`` in the registry.

    An unknown model or version fails the task (no retry) before anything is deployed.
    Pushes a candidate like the build stage's (version, digest, uri) plus ``no_op`` when
    that version already serves.

    :param model: the model (templated).
    :param version: the version to go to, or ``previous`` (templated).
    """

    template_fields = ("model", "version")
    ui_color = "#fadbd8"

    def __init__(self, *, version: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version

    def run(self, rc: ReleaseContext) -> dict[str, Any]:
        from model_delivery.release import resolve_rollback

        return resolve_rollback(rc, str(self.version))
