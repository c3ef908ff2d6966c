"""Spec section of the ``kubernetes`` deploy target (``deploy.kubernetes`` in model.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class KubernetesTargetSpec(BaseModel):
    """A Deployment with a RollingUpdate strategy in one namespace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field("default", description="Namespace the model is deployed to.")
    conn_id: str = Field("kubernetes_default", description="Airflow Kubernetes connection (kubeconfig or in-cluster).")
