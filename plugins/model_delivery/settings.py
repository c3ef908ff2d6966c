"""Where things live: project paths and the embedded defaults, overridable by environment.

Every setting has an embedded default that works on one machine with no services:

=================================  ==========================================================
``MODEL_DELIVERY_HOME``            state directory, default ``<project>/.local``
``MODEL_DELIVERY_MODELS_DIR``      model specs, default ``<project>/include/models``
``MODEL_DELIVERY_ARTIFACT_ROOT``   artifact store URI, default ``file://<home>/artifacts``;
                                   ``s3://bucket/prefix`` or ``gs://...`` with the provider;
                                   ``oci://host[:port]/repository``: an OCI registry
``MODEL_DELIVERY_RECORDS_ROOT``    release records, reports and delivery metrics, default the
                                   artifact root; ``file://<home>/records`` when that is
                                   ``oci://`` (a registry holds artifacts only)
``MODEL_DELIVERY_TRACKING_URI``    MLflow tracking/registry URI, default SQLite under home
``MODEL_DELIVERY_LEDGER_URL``      the deployment ledger (lease, serving state, journal), a
                                   SQLAlchemy URL, default SQLite under home; or
                                   ``MODEL_DELIVERY_LEDGER_CONN_ID``, an Airflow connection
=================================  ==========================================================

These are not secrets. Credentials for remote stores come from Airflow connections
(``MODEL_DELIVERY_ARTIFACT_CONN_ID``) or the provider's own environment, never from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model_delivery.ledger import Ledger
    from model_delivery.registry import Registry
    from model_delivery.store import ArtifactStore

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one process.

    :param home: local state directory (deploy state, locks, MLflow SQLite, scratch).
    :param models_dir: directory holding one folder per model spec.
    :param artifact_root: URI of the artifact store root.
    :param artifact_conn_id: Airflow connection used for a remote artifact store, if any.
    :param tracking_uri: MLflow tracking and registry URI.
    :param records_root: where release records live, when set (``MODEL_DELIVERY_RECORDS_ROOT``); else
        :func:`model_delivery.store.layout.records_location` decides from the artifact root.
    """

    home: Path
    models_dir: Path
    artifact_root: str
    artifact_conn_id: str | None
    tracking_uri: str
    records_root: str | None = None

    @property
    def deploy_dir(self) -> Path:
        """Local deploy state: which version serves each model, ports, pids."""
        return self.home / "deploy"

    @property
    def scratch_dir(self) -> Path:
        """Working directories for builds and fetched artifacts."""
        return self.home / "work"

    def open_store(self) -> ArtifactStore:
        """The artifact store at ``artifact_root`` (through ``artifact_conn_id`` when set): files, or an OCI registry
        (``oci://``), its records where :func:`model_delivery.store.layout.records_location` says."""
        from model_delivery.store import open_store

        return open_store(self.artifact_root, self.artifact_conn_id, home=self.home, records_root=self.records_root)

    def open_registry(self) -> Registry:
        """The MLflow model registry at ``tracking_uri``."""
        from model_delivery.registry import Registry

        return Registry(self.tracking_uri)

    def open_ledger(self) -> Ledger:
        """The deployment ledger every worker shares (``model_delivery.ledger``)."""
        from model_delivery.ledger import open_ledger

        return open_ledger(self.home)


class OpensStores:
    """Mixin: the artifact store, the registry and the ledger of ``self.settings``, opened once per instance."""

    settings: Settings

    @cached_property
    def store(self) -> ArtifactStore:
        return self.settings.open_store()

    @cached_property
    def registry(self) -> Registry:
        return self.settings.open_registry()

    @cached_property
    def ledger(self) -> Ledger:
        return self.settings.open_ledger()


def get_settings() -> Settings:
    """Read the settings from the environment (cheap; call it where it is needed)."""
    home = Path(os.environ.get("MODEL_DELIVERY_HOME", PROJECT_ROOT / ".local")).resolve()
    models_dir = Path(os.environ.get("MODEL_DELIVERY_MODELS_DIR", PROJECT_ROOT / "include" / "models"))
    return Settings(
        home=home,
        models_dir=models_dir.resolve(),
        artifact_root=os.environ.get("MODEL_DELIVERY_ARTIFACT_ROOT", f"file://{home / 'artifacts'}"),
        artifact_conn_id=os.environ.get("MODEL_DELIVERY_ARTIFACT_CONN_ID") or None,
        tracking_uri=os.environ.get("MODEL_DELIVERY_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
        records_root=os.environ.get("MODEL_DELIVERY_RECORDS_ROOT") or None,
    )
