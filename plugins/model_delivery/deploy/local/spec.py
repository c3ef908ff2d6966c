"""Spec section of the ``local`` deploy target (``deploy.local`` in model.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LocalTargetSpec(BaseModel):
    """Blue-green on this machine: one process per version behind a stable front port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address the front and the servers bind to.")
    port: int = Field(ge=1024, le=65535, description="Stable front port that clients use.")
    ready_timeout_seconds: float = Field(
        120.0, gt=0, description="How long a new server may take to become ready."
    )
