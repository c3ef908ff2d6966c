"""Evaluation of a language model: held-out perplexity and next-token accuracy, scored in a sandbox.

The scores of the tiny code_lm match the perplexity its own build measured on the same blocks;
an untrained LM of the same shape is worse on the same blocks, and the paired bootstrap over
blocks says so; the scoring process sees no Airflow secret.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_delivery.build_env import declare_default
from model_delivery.evaluate import EvaluationFailed, bootstrap_blocks, lm_metrics, score_blocks
from tests.helpers.lm import TINY_PARAMS, build_lm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lm(tmp_path_factory.mktemp("untrained") / "out", {"steps": 0})


def test_perplexity_scored_in_a_sandbox_matches_the_builds_own(tiny_lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgresql://admin:hunter2@db/w")
    blocks = score_blocks(tiny_lm / "model", tiny_lm / "data" / "eval.csv", declare_default("code_lm"),
                          max_length=128)  # the build's seq_len
    built = json.loads((tiny_lm / "model" / "training.json").read_text())["eval"]  # the build's own measure
    metrics = lm_metrics(blocks)
    assert len(blocks) == TINY_PARAMS["eval_blocks"]
    assert sum(b["tokens"] for b in blocks) == built["tokens"]
    assert metrics["perplexity"] == pytest.approx(built["perplexity"], rel=1e-3)
    assert 0 < metrics["next_token_accuracy"] < 1


def test_a_worse_lm_loses_on_the_same_blocks_in_the_paired_bootstrap(tiny_lm: Path, untrained: Path) -> None:
    eval_csv = tiny_lm / "data" / "eval.csv"
    declared = declare_default("code_lm")
    candidate = score_blocks(untrained / "model", eval_csv, declared, max_length=128)
    champion = score_blocks(tiny_lm / "model", eval_csv, declared, max_length=128)
    assert lm_metrics(candidate)["perplexity"] > 2 * lm_metrics(champion)["perplexity"]

    intervals = bootstrap_blocks(candidate, champion, samples=200, confidence=0.95, seed=7)

    assert intervals["perplexity"]["delta"][0] > 0  # worse beyond doubt: the whole interval is above zero
    assert intervals["next_token_accuracy"]["delta"][1] < 0
    same = bootstrap_blocks(champion, champion, samples=50, confidence=0.95, seed=7)
    assert same["perplexity"]["delta"] == [0.0, 0.0]


def test_blocks_without_text_are_refused_with_the_reason(tiny_lm: Path, tmp_path: Path) -> None:
    bad = tmp_path / "eval.csv"
    bad.write_text("block,file\n0,a.py\n")
    with pytest.raises(EvaluationFailed, match="no 'text' column"):
        score_blocks(tiny_lm / "model", bad, declare_default("code_lm"))
