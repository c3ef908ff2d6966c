"""Typed errors of a release.

Errors whose answer will not change on retry (a broken spec, a rejected model, a
tampered artifact) subclass ``AirflowFailException`` when Airflow is importable, so the
task fails without retries. Infrastructure errors stay ordinary exceptions so retries apply.
"""

from __future__ import annotations

from typing import Any

try:  # Airflow is optional: the library is usable (and tested) without it.
    from airflow.sdk.exceptions import AirflowFailException as _NoRetry
except ImportError:  # pragma: no cover - exercised only where Airflow is absent
    _NoRetry = Exception  # type: ignore[misc,assignment]

from model_server.manifest import ArtifactIntegrityError


class ModelDeliveryError(Exception):
    """Base of every model-delivery error."""


class ReleaseFailed(ModelDeliveryError, _NoRetry):
    """A stage found a definite problem; retrying will not change the answer.

    :param message: what went wrong, where, and the fix.
    :param result: the stage's findings (small JSON), recorded and pushed to XCom before failing.
    """

    def __init__(self, message: str, *, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result


class InvalidModelSpec(ReleaseFailed):
    """A model.yaml is missing, malformed, or has invalid fields."""


class InvalidConf(ReleaseFailed):
    """The run's conf has a key or value the release does not accept."""


class BuildFailed(ReleaseFailed):
    """The build entrypoint failed or did not produce the expected outputs."""


class GateRejected(ReleaseFailed):
    """The gate did not bless the candidate."""


class SmokeTestFailed(ReleaseFailed):
    """A golden request failed its checks, or the latency budget was exceeded."""


class TamperedArtifact(ReleaseFailed, ArtifactIntegrityError):
    """Artifact files do not match the recorded digest."""


class SignatureRefused(TamperedArtifact):
    """An artifact's signature is missing or does not hold (``signing`` in the spec); nothing is served.

    :param message: what is wrong, where, and the fix.
    :param reason: ``unsigned``, ``bad-signature``, ``wrong-key``, ``untrusted-certificate``, ``changed-files``, or
        ``no-trust`` (nothing to verify with is configured).
    """

    def __init__(self, message: str, *, reason: str = "bad-signature", result: dict[str, Any] | None = None) -> None:
        super().__init__(message, result=result)
        self.reason = reason


class DeployFailed(ModelDeliveryError):
    """A deploy target could not bring the candidate up (may be retried)."""


class DryRunComplete(ModelDeliveryError):
    """``dry_run``: the target reported what it would change and changed nothing; the release stops here.

    Not a failure: the stage is recorded as ``dry-run``, the deploy stages after it are skipped,
    and the release ends with the outcome ``dry-run``.

    :param message: what the dry run found, per host or object.
    :param result: the plan (small JSON), recorded and pushed to XCom.
    """

    def __init__(self, message: str, *, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result
