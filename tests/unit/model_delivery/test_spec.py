"""load_spec / discover_specs / spec_docs on real model folders and real broken YAML files."""

from __future__ import annotations

import json
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
    # each of these raised something else than InvalidModelSpec before (found by tests/unit/.../test_fuzz.py)
    pytest.param(_edit(lambda s: s["build"].update(entrypoint="train\0.py")), "build.entrypoint", "'train\\x00.py'",
                 id="nul-byte-in-a-file-name"),  # ValueError: embedded null byte
    pytest.param(lambda d: (d / "model.yaml").write_bytes(b"name: \xff\xfe\xfa"), None, "not valid YAML",
                 id="not-utf-8"),  # UnicodeDecodeError
    pytest.param(_edit(lambda s: s.update(timezone="x" * 5000)), "timezone", "is not an IANA timezone",
                 id="timezone-too-long-for-a-file-name"),  # OSError: File name too long
    pytest.param(_edit(lambda s: s["validation"].update(suite="x" * 5000)), "validation.suite", "File name too long",
                 id="file-name-too-long"),  # OSError from Path.is_file (a fresh-clone run's fuzz test found it)
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


def test_deeply_nested_yaml_is_refused_as_an_invalid_spec(tmp_path: Path) -> None:
    """It raised RecursionError before (found by test_fuzz.py); the limit is Python's default, as in Airflow."""
    import sys

    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    (model_dir / "model.yaml").write_text("[" * 1500 + "]" * 1500)
    limit = sys.getrecursionlimit()  # Hypothesis may have raised it for the fuzz tests in this process
    sys.setrecursionlimit(1000)
    try:
        with pytest.raises(InvalidModelSpec, match="not valid YAML: nested too deeply. Fix:"):
            load_spec(model_dir)
    finally:
        sys.setrecursionlimit(limit)


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
    edit_spec(model_dir, lambda spec: spec.update(owner="ok", **{"k" * 100_000: 1}))  # a 100 kB unknown field name
    with pytest.raises(InvalidModelSpec) as caught:
        load_spec(model_dir)
    assert "field 'kkk" in str(caught.value) and len(str(caught.value)) < 2000


def test_a_symlink_out_of_the_model_folder_is_refused(tmp_path: Path) -> None:
    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    (model_dir / "reference.csv").unlink()
    (model_dir / "reference.csv").symlink_to(secret)
    with pytest.raises(InvalidModelSpec, match="field 'validation.reference' names 'reference.csv', which is outside"):
        load_spec(model_dir)


def _golden(text: str) -> Callable[[Path], None]:
    return lambda model_dir: (model_dir / "golden.json").write_text(text)


CASE = {"name": "one row", "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 30], "data": [0] * 30}],
        "expect": {"output": "predict", "equals": [1]}}

BAD_GOLDEN = [
    pytest.param(_golden("[{\"name\": "), "cannot read golden requests", id="not-json"),
    pytest.param(_golden("{}"), "must be a non-empty JSON list of cases", id="an-object"),
    pytest.param(_golden("[]"), "must be a non-empty JSON list of cases", id="empty"),
    pytest.param(_golden(json.dumps([{**CASE, "expect": {"equals": [1]}}])), "case 0, field 'expect.output'",
                 id="expect-without-output"),
    pytest.param(_golden(json.dumps([CASE, {**CASE, "inputs": []}])), "case 1, field 'inputs'", id="no-inputs"),
    pytest.param(_golden(json.dumps([{**CASE, "expected": CASE["expect"]}])), "case 0, field 'expected': Extra inputs",
                 id="misspelled-expect"),
    pytest.param(_golden("[" * 100_000 + "]" * 100_000), "golden requests", id="nested-too-deeply"),
    pytest.param(_golden("[" + " " * (5 * 1024 * 1024) + "]"), "more than a golden file may have", id="huge"),
]


@pytest.mark.parametrize(("breaker", "detail"), BAD_GOLDEN)
def test_a_malformed_golden_file_is_refused_at_parse_naming_smoke_golden(
    tmp_path: Path, breaker: Callable[[Path], None], detail: str
) -> None:
    model_dir = copy_models(tmp_path / "models", ("breast_cancer",)) / "breast_cancer"
    breaker(model_dir)

    with pytest.raises(InvalidModelSpec) as caught:
        load_spec(model_dir)

    message = str(caught.value)
    assert message.startswith(f"{model_dir / 'model.yaml'}: field 'smoke.golden' names 'golden.json', which is not "
                              "valid golden requests: "), message
    assert detail in message
    assert f"Fix: make {model_dir / 'golden.json'} a JSON list of {{name, inputs, expect}}" in message
    assert len(message) < 1200


@pytest.mark.parametrize(("golden", "detail"), [
    pytest.param([{"name": "no prompt", "expect": {}}], "prompt 0, field 'prompt'", id="no-prompt"),
    pytest.param([{"name": "r", "prompt": "x", "expect": {"regex": "("}}], "field 'expect.regex': not a regular",
                 id="bad-regex"),
    pytest.param([CASE], "prompt 0, field", id="a-table-case"),
])
def test_a_language_models_golden_prompts_are_checked_at_parse(tmp_path: Path, golden: list, detail: str) -> None:
    model_dir = copy_models(tmp_path / "models", ("code_lm",)) / "code_lm"
    load_spec(model_dir)
    (model_dir / "golden.json").write_text(json.dumps(golden))

    with pytest.raises(InvalidModelSpec) as caught:
        load_spec(model_dir)

    message = str(caught.value)
    assert "field 'smoke.golden' names 'golden.json', which is not valid golden prompts" in message
    assert detail in message and "Fix: make" in message and "{name, prompt, max_tokens, expect}" in message


def test_a_broken_golden_file_leaves_the_other_models_specs_loading(tmp_path: Path) -> None:
    models = copy_models(tmp_path / "models", ("breast_cancer", "wine"))
    (models / "wine" / "golden.json").write_text("not json")

    specs, errors = discover_specs(models)

    assert list(specs) == ["breast_cancer"] and list(errors) == ["wine"]
    assert "field 'smoke.golden'" in errors["wine"]


def _port(port: int, host: str = "127.0.0.1") -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec["deploy"]["local"].update(port=port, host=host)


@pytest.mark.parametrize(("ours", "theirs", "clash"), [
    pytest.param(_port(8700), _port(8700), True, id="same-port"),
    pytest.param(_port(8700, "0.0.0.0"), _port(8700), True, id="wildcard-and-loopback"),
    pytest.param(_port(8700, "localhost"), _port(8700), True, id="localhost-and-127.0.0.1"),
    pytest.param(_port(8700), _port(8701), False, id="different-ports"),
    pytest.param(_port(8700, "10.0.0.1"), _port(8700, "10.0.0.2"), False, id="different-addresses"),
    pytest.param(_port(8700), lambda spec: (_port(8700)(spec), spec["deploy"].update(
        target="kubernetes", kubernetes={"image": "serving:1"})), False, id="the-other-does-not-deploy-locally"),
])
def test_two_specs_claiming_one_local_port_are_refused_naming_both(
    tmp_path: Path, ours: Callable[[dict[str, Any]], None], theirs: Callable[[dict[str, Any]], None], clash: bool
) -> None:
    from model_delivery.spec import check_port_clashes

    models = copy_models(tmp_path / "models", ("breast_cancer", "wine"))
    edit_spec(models / "breast_cancer", ours)
    edit_spec(models / "wine", theirs)
    specs, errors = discover_specs(models)
    assert not errors  # each spec alone is valid, and both DAGs load

    if not clash:
        check_port_clashes(specs["breast_cancer"], models / "breast_cancer", specs.values())
        return
    for name, other in (("breast_cancer", "wine"), ("wine", "breast_cancer")):
        with pytest.raises(InvalidModelSpec) as caught:
            check_port_clashes(specs[name], models / name, specs.values())
        message = str(caught.value)
        assert message.startswith(f"{models / name / 'model.yaml'}: field 'deploy.local.port' is 8700")
        assert f"which model '{other}' claims too (deploy.local.port: 8700" in message
        assert "Fix: give one of" in message and "another free port" in message


def test_the_demo_models_and_the_test_copies_claim_different_ports(tmp_path: Path) -> None:
    from model_delivery.spec import check_port_clashes

    for models in (MODELS, copy_models(tmp_path / "models", ("breast_cancer", "wine", "code_lm"))):
        specs, errors = discover_specs(models)
        assert not errors
        for spec in specs.values():
            check_port_clashes(spec, models / spec.name, specs.values())
