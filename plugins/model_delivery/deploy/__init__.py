"""Deploy targets behind one protocol, chosen by the spec's ``deploy.target``.

A release uses a target in four steps: ``stage`` starts the candidate beside what is
serving, without traffic; ``shift`` moves production traffic to it; ``retire`` frees the
previous version once the candidate is promoted; ``rollback`` puts back what served
before this run, from whatever step the run reached. Each step is idempotent.

``plan`` is the dry run (the release conf's ``dry_run``): it reports what ``stage`` and
``shift`` would change (Ansible: check mode on every host; Kubernetes: a server-side dry run
of every object; local: the ports and processes) and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from model_delivery.artifacts import ArtifactStore
    from model_delivery.settings import Settings
    from model_delivery.spec import ModelSpec


@dataclass(frozen=True)
class Candidate:
    """The version a run delivers."""

    model: str
    version: str
    digest: str


class DeployTarget(Protocol):
    """What every deploy target provides. Results are small JSON-able dicts."""

    name: str

    def plan(self, candidate: Candidate) -> dict[str, Any]: ...

    def stage(self, candidate: Candidate, run_id: str) -> dict[str, Any]: ...

    def shift(self, run_id: str) -> dict[str, Any]: ...

    def retire(self, run_id: str) -> dict[str, Any]: ...

    def rollback(self, run_id: str) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


def get_target(
    spec: ModelSpec, settings: Settings, store: ArtifactStore, log: Callable[..., None] | None = None
) -> DeployTarget:
    """Build the deploy target the spec names; ``log`` receives a target's progress (Ansible's output)."""
    if spec.deploy.target == "local":
        from model_delivery.deploy.local import LocalTarget

        assert spec.deploy.local is not None  # guaranteed by DeploySpec validation
        return LocalTarget(spec.name, spec.deploy.local, settings.deploy_dir / spec.name, store, spec.serving,
                           settings.open_ledger())
    if spec.deploy.target == "ansible":
        from model_delivery.deploy.ansible import AnsibleTarget

        return AnsibleTarget(spec, settings, store, log=log)
    if spec.deploy.target == "kubernetes":
        from model_delivery.deploy.kubernetes import KubernetesTarget

        return KubernetesTarget(spec, settings, store)
    raise ValueError(f"unknown deploy target {spec.deploy.target!r}")
