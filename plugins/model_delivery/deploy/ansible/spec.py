"""Spec section of the ``ansible`` deploy target (``deploy.ansible`` in model.yaml)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_PERCENT = re.compile(r"^([1-9][0-9]?|100)%$")


class LoadBalancerSpec(BaseModel):
    """The HAProxy in front of the fleet, driven through its runtime API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime_api: str = Field(
        min_length=1,
        description="HAProxy runtime API as reached from `lb_host`: a unix socket path "
        "(`stats socket /run/haproxy/admin.sock level admin`) or `host:port`.",
    )
    backend: str | None = Field(
        None, description="HAProxy backend of the model; default: the model name. Its server names are the "
        "inventory host names (or each host's `model_server_lb_server`)."
    )
    lb_host: str = Field(
        "localhost",
        description="Where the runtime API is reached from: `localhost` (the Airflow worker) or an inventory host.",
    )
    front_url: str = Field(
        pattern=r"^https?://",
        description="The address clients use (HAProxy's frontend); `verify` sends the golden requests there.",
    )
    grpc_front: str | None = Field(
        None, pattern=r"^[^/\s]+:[0-9]{1,5}$",
        description="With `serving.grpc: true`: `host:port` of HAProxy's gRPC frontend (HTTP/2, `bind ... proto h2`, to "
        "`grpc_backend`, see docs/deploy-ansible.md); `verify` sends the golden requests there with "
        "`smoke.protocol: grpc`.",
    )
    grpc_backend: str | None = Field(
        None, description="With `serving.grpc: true`: HAProxy backend of the hosts' gRPC ports; default: "
        "`<backend>_grpc`. The same server names as `backend`: a host is drained and put back in both."
    )


class AnsibleTargetSpec(BaseModel):
    """Rolling delivery to a fleet of hosts with Ansible, behind a load balancer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inventory: str | None = Field(
        None, description="Inventory file in the model folder; or use inventory_conn_id."
    )
    inventory_conn_id: str | None = Field(
        None, description="Airflow connection whose extra holds the inventory (hosts, ports, users): the "
        "inventory mapping itself, or under the key `inventory` (YAML text or a mapping)."
    )
    group: str = Field("model_servers", min_length=1, description="Inventory group of the hosts that serve the model.")
    serial: int | str = Field(
        1, description="Batch size of the rolling update: a number of hosts (`1`) or a percentage (`\"25%\"`)."
    )
    max_fail_percentage: int = Field(
        0, ge=0, le=100,
        description="The rollout stops when more than this percentage of a batch fails. Any failed host fails "
        "the release, and every host it touched is rolled back.",
    )
    load_balancer: LoadBalancerSpec = Field(description="The load balancer in front of the hosts.")
    staging_host: str | None = Field(
        None, description="Inventory host that runs the candidate on its staging port for the smoke test "
        "(no traffic); default: the group's first host."
    )
    ready_timeout_seconds: float = Field(
        120.0, gt=0, le=3600, description="How long a (re)started server may take to answer /v2/health/ready."
    )
    drain_timeout_seconds: float = Field(
        30.0, ge=0, le=3600, description="How long a host's open sessions may take to finish after it is drained."
    )
    remote_root: str | None = Field(
        None, description="Directory on every host for the runtime, artifacts and logs; overrides the inventory's "
        "`model_server_root` (default there: /opt/model-delivery/<model>)."
    )
    artifact_transfer: Literal["push", "pull"] = Field(
        "push", description="How hosts get the artifact. `push`: the controller fetches and verifies it, then copies "
        "its files to each host (a rerun skips files already there). `pull`: each host copies the files from the "
        "store itself, part by part, verifying every 64 MiB part as it is written and resuming at the first part "
        "that does not verify after an interruption; the store must be a filesystem every host mounts "
        "(a file:// artifact root, e.g. NFS), at `store_path_on_hosts`."
    )
    store_path_on_hosts: str | None = Field(
        None, pattern=r"^/", description="With `artifact_transfer: pull`: the artifact store's root as the hosts "
        "mount it (default: the same path as on the Airflow worker)."
    )
    ssh_conn_id: str | None = Field(
        None, description="Airflow connection for SSH: login is the remote user; the private key is the extra's "
        "`private_key` (or `key_file`). The extra's `known_hosts` (lines of a known_hosts file) are the only host "
        "keys accepted; `no_host_key_check: true` turns checking off. Never logged."
    )
    become_conn_id: str | None = Field(
        None, description="Airflow connection whose password is the become (sudo) password; setting it turns "
        "become on. Never logged."
    )
    timeout_seconds: float = Field(3600.0, gt=0, le=86400, description="One ansible-playbook run is killed after this long.")

    @field_validator("serial")
    @classmethod
    def _serial(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("serial must be at least 1 host")
            return value
        if not _PERCENT.match(value):
            raise ValueError(f"serial must be a number of hosts or a percentage like '25%', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_inventory(self) -> AnsibleTargetSpec:
        if (self.inventory is None) == (self.inventory_conn_id is None):
            raise ValueError("give exactly one of 'inventory' (a file in the model folder) and 'inventory_conn_id'")
        return self
