"""Model registry over MLflow: versions, lineage tags, and the production/previous aliases.

The default is SQLite under ``.local/``; any MLflow tracking URI works
(``MODEL_DELIVERY_TRACKING_URI``). Each build registers one model version whose
``source`` is the artifact URI and whose tags carry its lineage: the artifact digest,
git sha, data digests, spec digest, dag_id and run_id. Promotion moves the
``production`` alias and keeps the one it replaced as ``previous``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

PRODUCTION = "production"
PREVIOUS = "previous"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as small JSON-able facts."""

    name: str
    version: str
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.tags.get("artifact_digest", "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "run_id": self.run_id,
            "digest": self.digest,
            "aliases": list(self.aliases),
        }


def _version(mv: Any) -> ModelVersion:
    return ModelVersion(
        name=mv.name,
        version=str(mv.version),
        source=mv.source,
        run_id=mv.run_id,
        tags=dict(mv.tags or {}),
        aliases=list(getattr(mv, "aliases", []) or []),
    )


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"value {value!r} may not contain a single quote")
    return f"'{value}'"


class Registry:
    """The MLflow model registry, reached lazily.

    :param tracking_uri: MLflow tracking and registry URI.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    @cached_property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _ensure_model(self, name: str, description: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=description)

    def _experiment_id(self, name: str) -> str:
        experiment_name = f"model-delivery/{name}"
        found = self.client.get_experiment_by_name(experiment_name)
        return found.experiment_id if found else self.client.create_experiment(experiment_name)

    def find_by_digest(self, name: str, digest: str) -> ModelVersion | None:
        """Return the newest version of ``name`` built from the artifact ``digest``, if any."""
        found = self.client.search_model_versions(
            f"name={_quote(name)} and tags.artifact_digest={_quote(digest)}"
        )
        versions = sorted((_version(v) for v in found), key=lambda v: int(v.version))
        return versions[-1] if versions else None

    def register(
        self,
        name: str,
        *,
        source: str,
        digest: str,
        tags: dict[str, str],
        params: dict[str, Any],
        description: str = "",
    ) -> tuple[ModelVersion, bool]:
        """Register a build as a new version, or return the version already holding ``digest``.

        :return: the version and whether it already existed (idempotent re-runs).
        """
        self._ensure_model(name, description)
        existing = self.find_by_digest(name, digest)
        if existing is not None:
            return existing, True
        run = self.client.create_run(self._experiment_id(name), run_name=tags.get("run_id"), tags=tags)
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, value)
        mv = self.client.create_model_version(
            name, source=source, run_id=run.info.run_id, tags={**tags, "artifact_digest": digest}
        )
        self.client.set_terminated(run.info.run_id)
        return _version(mv), False

    def log_metrics(self, name: str, version: str, metrics: dict[str, float]) -> None:
        """Log metrics on the version's MLflow run and as ``metric.<name>`` version tags."""
        mv = self.get(name, version)
        if mv.run_id:
            for key, value in metrics.items():
                self.client.log_metric(mv.run_id, key, float(value))
        for key, value in metrics.items():
            self.client.set_model_version_tag(name, version, f"metric.{key}", repr(float(value)))

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)

    def get(self, name: str, version: str) -> ModelVersion:
        return _version(self.client.get_model_version(name, version))

    def params(self, version: ModelVersion) -> dict[str, str]:
        """The build params logged on the version's MLflow run (empty when it has none)."""
        if not version.run_id:
            return {}
        return dict(self.client.get_run(version.run_id).data.params or {})

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (empty when the model is unknown)."""
        found = self.client.search_model_versions(f"name={_quote(name)}")
        return sorted((_version(v) for v in found), key=lambda v: int(v.version))

    def alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version an alias points to, or None when the alias (or the model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return _version(self.client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None

    def promote(self, name: str, version: str) -> dict[str, Any]:
        """Point ``production`` at ``version`` and ``previous`` at what production was.

        Idempotent: promoting the version that is already production changes nothing.
        """
        current = self.alias(name, PRODUCTION)
        if current is not None and current.version == version:
            previous = self.alias(name, PREVIOUS)
            return {"production": version, "previous": previous.version if previous else None, "changed": False}
        if current is not None:
            self.client.set_registered_model_alias(name, PREVIOUS, current.version)
        self.client.set_registered_model_alias(name, PRODUCTION, version)
        return {"production": version, "previous": current.version if current else None, "changed": True}

    def set_aliases(self, name: str, aliases: dict[str, str | None]) -> None:
        """Point each alias at its version, or delete it where the version is None (a rollback of a promote)."""
        from mlflow.exceptions import MlflowException

        for alias, version in aliases.items():
            if version is None:
                with contextlib.suppress(MlflowException):
                    self.client.delete_registered_model_alias(name, alias)
            else:
                self.client.set_registered_model_alias(name, alias, version)

    def metrics_of(self, mv: ModelVersion) -> dict[str, float]:
        """The ``metric.<name>`` tags of a version as floats."""
        return {k.removeprefix("metric."): float(v) for k, v in mv.tags.items() if k.startswith("metric.")}
