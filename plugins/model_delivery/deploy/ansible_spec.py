"""Spec section of the ``ansible`` deploy target (``deploy.ansible`` in model.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AnsibleTargetSpec(BaseModel):
    """Rolling delivery to a fleet of hosts with Ansible, behind a load balancer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inventory: str | None = Field(
        None, description="Inventory file in the model folder; or use inventory_conn_id."
    )
    inventory_conn_id: str | None = Field(
        None, description="Airflow connection whose extra holds the inventory (hosts, ports, users)."
    )
