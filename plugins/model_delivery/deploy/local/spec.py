"""Spec section of the ``local`` deploy target (``deploy.local`` in model.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LocalTargetSpec(BaseModel):
    """Blue-green on this machine: one process per version behind a stable front port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address the front and the servers bind to.")
    port: int = Field(ge=1024, le=65535, description="Stable front port that clients use.")
    grpc_port: int | None = Field(
        None, ge=1024, le=65535,
        description="With `serving.grpc: true` (and only then): the front's stable port for gRPC clients. The "
        "front forwards its TCP connections (HTTP/2) to the active server's gRPC port; the switch moves both ports "
        "at once.",
    )
    ready_timeout_seconds: float = Field(
        120.0, gt=0, description="How long a new server may take to become ready."
    )

    @model_validator(mode="after")
    def _two_ports(self) -> LocalTargetSpec:
        if self.grpc_port is not None and self.grpc_port == self.port:
            raise ValueError(f"grpc_port and port are both {self.port}: the front needs one port for HTTP and "
                             "another for gRPC. Fix: choose another free port for grpc_port")
        return self
