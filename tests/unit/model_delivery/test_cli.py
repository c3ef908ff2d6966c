"""``model-delivery`` commands that read a spec: a broken or missing spec is one clear error, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_delivery.cli import main


@pytest.fixture()
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = tmp_path / "models"
    (models / "broken").mkdir(parents=True)
    (models / "broken" / "model.yaml").write_text("name: broken\nbuild: 3\n")
    monkeypatch.setenv("MODEL_DELIVERY_MODELS_DIR", str(models))
    monkeypatch.setenv("MODEL_DELIVERY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MODEL_DELIVERY_ARTIFACT_ROOT", raising=False)
    return models


@pytest.mark.parametrize("command", [["summary"], ["render-k8s"]])
@pytest.mark.parametrize(("model", "named"), [
    pytest.param("broken", "field 'build': Input should be a valid dictionary", id="broken"),
    pytest.param("missing", "model.yaml: not found. Fix: add a model.yaml", id="missing"),
])
def test_a_bad_spec_is_an_error_naming_the_field_not_a_traceback(models: Path, capsys: pytest.CaptureFixture[str],
                                                                command: list[str], model: str, named: str) -> None:
    code = main([*command, model])

    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.startswith("error: ") and named in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
