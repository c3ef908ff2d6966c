"""The registry of deploy targets (``model_delivery.deploy.TARGETS``) is the one source of the spec's
``deploy.target`` choices, its sections and ``get_target``; nothing here needs any infrastructure."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
import typing
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from model_delivery.deploy import DEFAULT_TARGET, TARGETS, target_class
from model_delivery.exceptions import InvalidModelSpec
from model_delivery.spec import DeploySpec, load_spec
from tests.helpers.models import PROJECT, copy_models, edit_spec

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "breast_cancer"


def test_the_spec_offers_exactly_the_registered_targets_with_their_sections() -> None:
    target = DeploySpec.model_fields["target"]
    assert typing.get_args(target.annotation) == tuple(TARGETS)
    assert target.default == DEFAULT_TARGET in TARGETS
    assert list(DeploySpec.model_fields) == ["lease_wait_seconds", "target", *TARGETS]  # one common field
    for name, entry in TARGETS.items():
        section = DeploySpec.model_fields[name]
        assert typing.get_args(section.annotation) == (entry.load_spec(), type(None)), name
        assert section.default is None
        assert f"`{name}` ({entry.description})" in (target.description or "")


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_registered_target_is_accepted_and_needs_its_section(name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        DeploySpec.model_validate({"target": name})

    [error] = raised.value.errors()
    assert error["type"] == "value_error"  # the choice was accepted; its section is missing
    assert f"target {name!r} needs a '{name}:' section {TARGETS[name].section_hint}" in error["msg"]


def test_an_unknown_target_is_refused_naming_the_registered_ones(tmp_path: Path) -> None:
    model_dir = copy_models(tmp_path / "models", (MODEL,)) / MODEL
    edit_spec(model_dir, lambda spec: spec["deploy"].update(target="nomad"))

    with pytest.raises(InvalidModelSpec) as raised:
        load_spec(model_dir)

    message = str(raised.value)
    assert "field 'deploy.target'" in message and "(got 'nomad')" in message
    assert "Input should be 'local', 'ansible' or 'kubernetes'" in message
    assert "Fix: use one of the allowed values" in message
    with pytest.raises(ValueError, match=r"unknown deploy target 'nomad': choose from \['local', 'ansible', 'kubernetes'\]"):
        target_class("nomad")


@pytest.mark.parametrize("name", list(TARGETS))
def test_each_entry_names_a_target_class_built_from_the_spec(name: str) -> None:
    entry = TARGETS[name]
    module, _, attribute = entry.target.partition(":")
    cls = getattr(importlib.import_module(module), attribute)

    assert target_class(name) is cls
    assert cls.name == name
    assert inspect.ismethod(cls.from_spec) and cls.from_spec.__self__ is cls  # a classmethod
    assert list(inspect.signature(cls.from_spec).parameters) == ["spec", "settings", "store", "log"]
    for step in ("plan", "stage", "shift", "retire", "rollback", "status"):
        assert callable(getattr(cls, step)), (name, step)
    spec_module, _, spec_class = entry.spec.partition(":")
    assert getattr(importlib.import_module(spec_module), spec_class) is entry.load_spec()


def test_loading_a_spec_imports_no_target_implementation() -> None:
    """The DAG files load every spec: the spec classes are light, the targets are imported when used."""
    code = (
        "import sys, json\n"
        "import model_delivery.spec, model_delivery.deploy\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'kubernetes_asyncio',"
        " 'ansible', 'ansible_runner') or m.endswith('.target') or m == 'model_delivery.container_build')))\n"
    )
    path = os.pathsep.join([str(PROJECT / "plugins"), str(PROJECT / "include" / "serving")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": path})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_type_checkers_view_of_the_sections_matches_the_registry() -> None:
    """``spec._Deploy`` declares sections for mypy only (pydantic's come from TARGETS): none may be stale."""
    tree = ast.parse((PROJECT / "plugins" / "model_delivery" / "spec.py").read_text())
    [deploy] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "_Deploy"]
    [declared] = [node for node in deploy.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    sections = {node.target.id: ast.unparse(node.annotation) for node in declared.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id != "target"}
    assert sections
    for name, annotation in sections.items():
        assert name in TARGETS, f"{name} is declared in spec._Deploy but is not in TARGETS"
        assert annotation == f"{TARGETS[name].spec.rpartition(':')[2]} | None", name
