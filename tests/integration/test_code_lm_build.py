"""The code_lm build (the tiny LM every LM test shares): the Hugging Face layout, sharded safetensors, no pickle."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_lm_build_writes_the_hugging_face_layout_without_pickle(tiny_lm: Path) -> None:
    model = tiny_lm / "model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json", "serving.json"} <= names
    index = json.loads((model / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and shards <= names  # sharded, and every shard the index names is there
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 32  # a head size vLLM's CPU attention serves
    serving = json.loads((model / "serving.json").read_text())
    assert serving["runtime"] == "vllm" and serving["name"] == "code_lm"

    with open(tiny_lm / "data" / "eval.csv", newline="") as handle:
        held_out = list(csv.DictReader(handle))
    with open(tiny_lm / "data" / "train.csv", newline="") as handle:
        trained = list(csv.DictReader(handle))
    assert held_out and trained
    assert not {r["file"] for r in held_out} & {r["file"] for r in trained}  # split by file

    built_on = json.loads((tiny_lm / "build_env.json").read_text())  # the launcher's probe, as for every build
    assert {"torch", "transformers", "tokenizers", "safetensors"} <= set(built_on["libraries"])
    assert built_on["env"]["OMP_NUM_THREADS"] == "2"


def test_the_tokenizer_and_weights_load_offline_with_transformers(tiny_lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm / "model", use_safetensors=True)
    ids = tokenizer("def main():", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
