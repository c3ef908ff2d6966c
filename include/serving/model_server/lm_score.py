"""``python -m model_server.lm_score``: score held-out text blocks with a causal LM, in a process of its own.

For each block (a row of a CSV or Parquet file with a ``text`` column), the model's negative
log-likelihood of every token after the first, the number of such tokens, and how many of them
were the model's greedy next-token choice::

    python -m model_server.lm_score --artifact DIR --blocks eval.csv --output scores.json [--max-length 256]
    python -m model_server.lm_score --artifact DIR --blocks eval.parquet --format parquet --output scores.json

``--format`` defaults to the file's suffix (``.parquet``, else CSV). Reading Parquet needs pyarrow.

The output keeps one entry per block (``{"nll": ..., "tokens": ..., "correct": ..., "bytes": ...}``,
``bytes`` the block's UTF-8 size), so that perplexity, bits per byte, next-token accuracy and a paired
bootstrap over blocks (candidate against champion
on the same blocks) are computed by the caller without loading the model again. Only
safetensors weights are loaded (``use_safetensors=True``): no pickle. It runs offline and, as
for ``model_server.predict``, in the build's environment: no Airflow secrets.

Exit codes: 0 done; 2 bad arguments; 4 the artifact or the blocks are unusable (the reason is the
last line on stderr).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

EXIT_UNUSABLE = 4


FORMATS = ("csv", "parquet")


def read_blocks(path: Path, fmt: str = "csv") -> list[str]:
    """The ``text`` column of a CSV or Parquet file of blocks."""
    if fmt == "parquet":
        return _parquet_blocks(path)
    csv.field_size_limit(16 * 1024 * 1024)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "text" not in (reader.fieldnames or []):
            raise ValueError(f"{path.name} has no 'text' column (columns: {reader.fieldnames})")
        return [row["text"] for row in reader]


def _parquet_blocks(path: Path) -> list[str]:
    """The ``text`` column of a Parquet file, read a batch at a time (only that column is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        schema = parquet.schema_arrow
        if "text" not in schema.names:
            raise ValueError(f"{path.name} has no 'text' column (columns: {schema.names})")
        kind = schema.field("text").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
            raise ValueError(f"{path.name}: the 'text' column holds {kind}, not strings")
        texts: list[str] = []
        for batch in parquet.iter_batches(columns=["text"]):
            values = batch.column(0).to_pylist()
            if None in values:
                raise ValueError(f"{path.name}: block {len(texts) + values.index(None) + 1} has no text (null)")
            texts.extend(values)
        return texts


def score(artifact: Path, texts: list[str], max_length: int, batch_size: int = 8) -> list[dict[str, float]]:
    """Per-block NLL sum, scored token count, greedy-correct count and UTF-8 bytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artifact)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(artifact, use_safetensors=True, dtype=torch.float32).eval()
    out: list[dict[str, float]] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
            targets = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            predicted = logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(predicted.reshape(-1, predicted.size(-1)), targets.reshape(-1),
                                                    reduction="none").view_as(targets)
            correct = predicted.argmax(-1) == targets
            for row in range(targets.shape[0]):
                keep = mask[row]
                out.append({"nll": float(nll[row][keep].sum()), "tokens": int(keep.sum()),
                            "correct": int(correct[row][keep].sum()),
                            "bytes": len(texts[start + row].encode("utf-8"))})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_server.lm_score")
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--blocks", required=True, type=Path,
                        help="CSV or Parquet file with a 'text' column, a block a row")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="the blocks' format (default: parquet for a .parquet file, else csv)")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per block at most (with <s>)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        fmt = args.format or ("parquet" if args.blocks.suffix.lower() == ".parquet" else "csv")
        texts = read_blocks(args.blocks, fmt)
        if not texts:
            raise ValueError(f"{args.blocks.name} has no blocks")
        scores = score(args.artifact, texts, args.max_length)
    except Exception as exc:  # noqa: BLE001 - the model's own code and files are reported, not trusted
        print(f"the language model could not be scored: {type(exc).__name__}: {str(exc)[:500]}", file=sys.stderr)
        return EXIT_UNUSABLE
    args.output.write_text(json.dumps({"blocks": scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
