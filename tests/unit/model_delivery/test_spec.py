"""load_spec / discover_specs / spec_docs on real model folders and real broken YAML files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.exceptions import InvalidModelSpec
from model_delivery.spec import ModelSpec, discover_specs, load_spec, spec_docs
from tests.helpers.models import PROJECT, copy_models, edit_spec

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

MODELS = PROJECT / "include" / "models"


@pytest.mark.parametrize(
    ("name", "task", "metrics", "n_thresholds"),
    [
        pytest.param("breast_cancer", "classification", ["accuracy", "f1", "roc_auc", "log_loss"], 3, id="breast_cancer"),
        pytest.param("wine", "classification", ["accuracy", "f1", "roc_auc"], 2, id="wine"),
    ],
)
def test_load_spec_on_the_demo_models(name: str, task: str, metrics: list[str], n_thresholds: int) -> None:
    spec = load_spec(MODELS / name)

    assert spec.name == name
    assert spec.dag_id == f"release__{name}"
    assert spec.task == task
    assert spec.evaluation.metrics == metrics
    assert len(spec.gate.thresholds) == n_thresholds
    assert spec.deploy.target == "local"
    assert spec.deploy.local is not None and 1024 <= spec.deploy.local.port <= 65535
    assert (MODELS / name / spec.build.entrypoint).is_file()
    assert (MODELS / name / spec.smoke.golden).is_file()


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda model_dir: edit_spec(model_dir, change)


def _write(text: str) -> Callable[[Path], None]:
    return lambda model_dir: (model_dir / "model.yaml").write_text(text)


def _delete(name: str) -> Callable[[Path], None]:
    return lambda model_dir: (model_dir / name).unlink()


def _pop(section: str, key: str | None = None) -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec.pop(section) if key is None else spec[section].pop(key)


LM = {"task": "language-model", "evaluation": {"metrics": ["perplexity"]},
      "gate": {"thresholds": {"perplexity": {"max": 100}}}}

BROKEN = [
    pytest.param(
        _edit(lambda s: s["gate"]["thresholds"].update(accuracy={"min": "high"})),
        "gate.thresholds.accuracy.min", "use a number", id="wrong-type",
    ),
    pytest.param(
        _edit(lambda s: s["smoke"].update(latency_budget=100)),
        "smoke.latency_budget", "fix its spelling", id="unknown-field-typo",
    ),
    pytest.param(_edit(_pop("task")), "task", "add it", id="missing-task"),
    pytest.param(_edit(_pop("evaluation")), "evaluation", "add it", id="missing-evaluation"),
    pytest.param(_edit(_pop("deploy")), "deploy", "add it", id="missing-deploy"),
    pytest.param(_edit(_pop("deploy", "local")), "deploy", "needs a 'local:' section", id="local-target-without-section"),
    pytest.param(_edit(lambda s: s.update(name="Breast-Cancer")), "name", "lowercase letters", id="bad-name-pattern"),
    pytest.param(_edit(lambda s: s.update(name="wine")), "name", "folder", id="name-is-not-the-folder"),
    pytest.param(_delete("train.py"), "build.entrypoint", "'train.py'", id="entrypoint-missing"),
    pytest.param(_delete("golden.json"), "smoke.golden", "'golden.json'", id="golden-missing"),
    pytest.param(
        _edit(lambda s: s["gate"]["thresholds"].update(accuracy={"min": 0.9, "max": 0.5})),
        "gate.thresholds.accuracy", "greater than max", id="threshold-min-above-max",
    ),
    pytest.param(
        _edit(lambda s: s["gate"]["thresholds"].update(accuracy={})),
        "gate.thresholds.accuracy", "at least one of min and max", id="threshold-without-bounds",
    ),
    pytest.param(
        _edit(lambda s: s["gate"]["thresholds"].update(precision={"min": 0.5})),
        "gate.thresholds.precision", "evaluation.metrics does not compute", id="threshold-on-unmeasured-metric",
    ),
    pytest.param(
        _edit(lambda s: s["evaluation"].update(metrics=["accuracy", "rmse"])),
        "evaluation.metrics", "['rmse']", id="regression-metric-on-classification",
    ),
    pytest.param(_edit(lambda s: s.update(serving={"runtime": "triton"})), "serving.runtime",
                 "choose from ['model_server', 'vllm']", id="unknown-runtime"),
    pytest.param(_edit(lambda s: s["deploy"].update(target="kubernetes", kubernetes={"replicas": 2})),
                 "deploy.kubernetes.image", "needs 'image' (the serving image) or 'model_image'",
                 id="kubernetes-model-server-without-an-image"),
    pytest.param(_edit(lambda s: s.update(serving={"runtime": "vllm"})), "serving.runtime",
                 "task 'classification' cannot be served by runtime 'vllm' (it speaks openai)",
                 id="table-model-on-vllm"),
    pytest.param(_edit(lambda s: s.update(LM)), "serving.runtime",
                 "task 'language-model' cannot be served by runtime 'model_server' (it speaks open-inference). "
                 "Fix: use serving.runtime vllm",
                 id="lm-on-model-server"),
    pytest.param(_edit(lambda s: s.update(LM, serving={"runtime": "vllm"},
                                          gate={**LM["gate"], "slices": [{"column": "file", "thresholds": {
                                              "perplexity": {"max": 9}}}]})),
                 "gate.slices", "judged on its held-out blocks", id="lm-with-slices"),
    pytest.param(_edit(lambda s: s.update(LM, serving={"runtime": "vllm"},
                                          evaluation={"metrics": ["perplexity", "accuracy"]})),
                 "evaluation.metrics", "['accuracy'] which a language-model model does not have",
                 id="table-metric-on-lm"),
    pytest.param(_edit(lambda s: s["build"].update(env={"OMP_NUM_THREADS": "4"})), "build.env",
                 "use build.threads", id="build-env-reserved"),
    pytest.param(_edit(lambda s: s["build"].update(entrypoint="/etc/passwd")), "build.entrypoint",
                 "outside the model folder", id="absolute-path"),
    pytest.param(_edit(lambda s: s["validation"].update(reference="../../../../../../etc/passwd")),
                 "validation.reference", "outside the model folder", id="dotdot-path"),
    pytest.param(_edit(lambda s: s["smoke"].update(golden="../wine/golden.json")), "smoke.golden",
                 "outside the model folder", id="another-models-file"),
    pytest.param(_write("name: breast_cancer\ntask: [classification\n"), None, "not valid YAML", id="not-yaml"),
    pytest.param(_write("- name: breast_cancer\n- task: classification\n"), None, "got list", id="yaml-list"),
    pytest.param(_delete("model.yaml"), None, "not found", id="missing-model-yaml"),
]


@pytest.mark.parametrize(("breaker", "field", "detail"), BROKEN)
def test_broken_spec_names_file_field_and_fix(
    tmp_path: Path, breaker: Callable[[Path], None], field: str | None, detail: str
) -> None:
    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    load_spec(model_dir)  # the copy is valid before it is broken
    breaker(model_dir)

    with pytest.raises(InvalidModelSpec) as caught:
        load_spec(model_dir)

    message = str(caught.value)
    assert str(model_dir / "model.yaml") in message
    if field is not None:
        assert f"field '{field}'" in message
    assert detail in message
    assert "Fix:" in message


def test_discover_specs_loads_good_folders_and_reports_broken_ones(tmp_path: Path) -> None:
    models = copy_models(tmp_path / "models", ("breast_cancer", "wine"))
    edit_spec(models / "wine", lambda s: s.pop("task"))
    (models / "Not-A-Model").mkdir()
    (models / "_ignored").mkdir()
    (models / "README.md").write_text("not a folder")

    specs, errors = discover_specs(models)

    assert list(specs) == ["breast_cancer"]
    assert isinstance(specs["breast_cancer"], ModelSpec)
    assert sorted(errors) == ["Not-A-Model", "wine"]
    assert "field 'task'" in errors["wine"] and str(models / "wine" / "model.yaml") in errors["wine"]
    assert "Fix:" in errors["Not-A-Model"]


def test_discover_specs_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert discover_specs(tmp_path / "absent") == ({}, {})


def test_spec_docs_mention_every_field() -> None:
    docs = spec_docs()

    for name in ModelSpec.model_fields:
        assert f"`{name}`" in docs, name
    for nested in ("build.entrypoint", "evaluation.metrics", "gate.thresholds", "smoke.latency_budget_ms",
                   "deploy.local.port"):
        assert f"`{nested}`" in docs, nested


BOMB = """name: breast_cancer
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    (model_dir / "model.yaml").write_text(BOMB)  # 9**9 strings if expanded: gigabytes, and an import error as big
    with pytest.raises(InvalidModelSpec) as caught:
        load_spec(model_dir)
    message = str(caught.value)
    assert "aliases (*a) are not allowed in a model spec" in message and "anchors and aliases" in message
    assert len(message) < 1000


def test_a_huge_spec_or_a_huge_bad_value_gives_a_short_error(tmp_path: Path) -> None:
    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    edit_spec(model_dir, lambda spec: spec.update(description="x" * 300_000))
    with pytest.raises(InvalidModelSpec, match="more than a model spec may have"):
        load_spec(model_dir)
    edit_spec(model_dir, lambda spec: spec.update(description="ok", owner=["y" * 100_000]))
    with pytest.raises(InvalidModelSpec) as caught:
        load_spec(model_dir)
    assert "field 'owner'" in str(caught.value) and len(str(caught.value)) < 2000


def test_a_symlink_out_of_the_model_folder_is_refused(tmp_path: Path) -> None:
    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    (model_dir / "reference.csv").unlink()
    (model_dir / "reference.csv").symlink_to(secret)
    with pytest.raises(InvalidModelSpec, match="field 'validation.reference' names 'reference.csv', which is outside"):
        load_spec(model_dir)
