"""Golden prompts of a language model: the file's schema, and the checks on a completion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_delivery.exceptions import InvalidModelSpec
from model_delivery.smoke_lm import PromptExpect, check_text, load_golden_prompts


@pytest.mark.parametrize(("content", "message"), [
    pytest.param("not json", "cannot read golden prompts", id="not-json"),
    pytest.param("[]", "non-empty JSON list", id="empty"),
    pytest.param(json.dumps([{"name": "a", "prompt": "p", "expect": {"contain": "x"}}]),
                 "prompt 0, field 'expect.contain'", id="unknown-check"),
    pytest.param(json.dumps([{"name": "a", "prompt": "", "expect": {}}]), "prompt 0, field 'prompt'", id="empty-prompt"),
    pytest.param(json.dumps([{"name": "a", "prompt": "p", "expect": {"regex": "("}}]),
                 "prompt 0, field 'expect.regex': not a regular expression", id="bad-regex"),
])
def test_a_malformed_golden_file_names_the_prompt_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "golden.json"
    path.write_text(content)
    with pytest.raises(InvalidModelSpec, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_golden_prompts(path)


def test_every_check_of_a_completion() -> None:
    text = "(self, x):\n    return x"
    assert check_text(PromptExpect(contains="return", regex=r"^\(self", min_length=5, max_length=100), text) == []
    assert check_text(PromptExpect(equals=text), text) == []
    problems = check_text(PromptExpect(contains="yield", regex=r"^def", equals="x", min_length=100, max_length=3),
                          text)
    assert len(problems) == 5
    assert "does not contain 'yield'" in problems[0] and "does not match /^def/" in problems[1]
    assert "fewer than min_length 100" in problems[3] and "more than max_length 3" in problems[4]
