"""Deploy targets behind one protocol, chosen by the spec's ``deploy.target``.

A release uses a target in four steps: ``stage`` starts the candidate beside what is
serving, without traffic; ``shift`` moves production traffic to it; ``retire`` frees the
previous version once the candidate is promoted; ``rollback`` puts back what served
before this run, from whatever step the run reached. Each step is idempotent.

``plan`` is the dry run (the release conf's ``dry_run``): it reports what ``stage`` and
``shift`` would change (Ansible: check mode on every host; Kubernetes: a server-side dry run
of every object; local: the ports and processes) and changes nothing.

Each target is a package, ``deploy/<name>/``: ``target.py`` holds the target (built by its
``from_spec``), ``spec.py`` its section of model.yaml (``deploy.<name>``; pydantic only, so
that loading a spec stays cheap). :data:`TARGETS` names them; the spec's ``deploy.target``
choices and sections (``model_delivery.spec``) and :func:`get_target` are made from it, so
adding a target is a package and one entry here. The entries are import paths, imported only
when used: importing this module imports no target.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import BaseModel

    from model_delivery.settings import Settings
    from model_delivery.spec import ModelSpec
    from model_delivery.store import ArtifactStore


@dataclass(frozen=True)
class Candidate:
    """The version a run delivers."""

    model: str
    version: str
    digest: str


class DeployTarget(Protocol):
    """What every deploy target provides. Results are small JSON-able dicts."""

    name: str

    @classmethod
    def from_spec(cls, spec: ModelSpec, settings: Settings, store: ArtifactStore,
                  log: Callable[..., None] | None = None) -> DeployTarget:
        """The target of ``spec`` (its ``deploy.<name>`` section); ``log`` receives its progress."""
        ...

    def plan(self, candidate: Candidate) -> dict[str, Any]: ...

    def stage(self, candidate: Candidate, run_id: str) -> dict[str, Any]: ...

    def shift(self, run_id: str) -> dict[str, Any]: ...

    def retire(self, run_id: str) -> dict[str, Any]: ...

    def rollback(self, run_id: str) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


def _load(path: str) -> Any:
    """The object that ``"package.module:attribute"`` names, its module imported now."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class TargetEntry:
    """One deploy target: where its class and its spec section are, and what it does, in a few words."""

    target: str
    """The target class, as ``module:attribute``; it has the classmethod ``from_spec``."""
    spec: str
    """The class of its spec section (``deploy.<name>``), as ``module:attribute``: a light module (pydantic)."""
    description: str
    """What it does, in a few words (the documentation of ``deploy.target``)."""
    section_hint: str = "(see docs/model-spec.md)"
    """Ends the error when the spec chooses the target but has no section for it."""

    def load_target(self) -> type[DeployTarget]:
        """The target class (imports its implementation)."""
        cls: type[DeployTarget] = _load(self.target)
        return cls

    def load_spec(self) -> type[BaseModel]:
        """The class of the target's spec section."""
        cls: type[BaseModel] = _load(self.spec)
        return cls


DEFAULT_TARGET = "local"

TARGETS: dict[str, TargetEntry] = {
    "local": TargetEntry("model_delivery.deploy.local.target:LocalTarget",
                         "model_delivery.deploy.local.spec:LocalTargetSpec",
                         "blue-green on this machine", section_hint="with at least 'port'"),
    "ansible": TargetEntry("model_delivery.deploy.ansible.target:AnsibleTarget",
                           "model_delivery.deploy.ansible.spec:AnsibleTargetSpec",
                           "rolling, a fleet of hosts behind a load balancer"),
    "kubernetes": TargetEntry("model_delivery.deploy.kubernetes.target:KubernetesTarget",
                              "model_delivery.deploy.kubernetes.spec:KubernetesTargetSpec",
                              "a rolling Deployment"),
}
"""The deploy targets by name, in the order the documentation lists them."""


def target_class(name: str) -> type[DeployTarget]:
    """The class of the target ``name`` (imported now)."""
    entry = TARGETS.get(name)
    if entry is None:
        raise ValueError(f"unknown deploy target {name!r}: choose from {list(TARGETS)}")
    return entry.load_target()


def get_target(
    spec: ModelSpec, settings: Settings, store: ArtifactStore, log: Callable[..., None] | None = None
) -> DeployTarget:
    """Build the deploy target the spec names; ``log`` receives a target's progress (Ansible's output)."""
    return target_class(spec.deploy.target).from_spec(spec, settings, store, log)
