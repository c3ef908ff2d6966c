"""lm_score's reading of held-out blocks: CSV and Parquet give the same blocks, bad files say why."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model_server.lm_score import EXIT_UNUSABLE, main, read_blocks

if TYPE_CHECKING:
    from pathlib import Path

TEXTS = ["def f(x):\n    return x + 1\n", 'print("a, \\"quoted\\" line")', "é ✓ unicode", ""]


def test_parquet_and_csv_blocks_are_the_same(tmp_path: Path) -> None:
    import csv

    with open(tmp_path / "eval.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["block", "text"])
        writer.writerows(enumerate(TEXTS))
    table = pa.table({"block": list(range(len(TEXTS))), "text": TEXTS})
    pq.write_table(table, tmp_path / "eval.parquet", row_group_size=3)  # blocks across row groups

    assert read_blocks(tmp_path / "eval.parquet", "parquet") == read_blocks(tmp_path / "eval.csv", "csv") == TEXTS


@pytest.mark.parametrize(("table", "message"), [
    pytest.param(pa.table({"block": [0, 1]}), r"eval.parquet has no 'text' column \(columns: \['block'\]\)",
                 id="no-text-column"),
    pytest.param(pa.table({"text": [1, 2]}), "the 'text' column holds int64, not strings", id="not-strings"),
    pytest.param(pa.table({"text": ["a", None, "c"]}), r"block 2 has no text \(null\)", id="null-text"),
])
def test_bad_parquet_blocks_are_refused_with_the_reason(tmp_path: Path, table: pa.Table, message: str) -> None:
    pq.write_table(table, tmp_path / "eval.parquet")
    with pytest.raises(ValueError, match=message):
        read_blocks(tmp_path / "eval.parquet", "parquet")


def test_the_format_argument_decides_how_the_blocks_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    blocks = tmp_path / "blocks"  # no suffix: only --format says it is Parquet
    pq.write_table(pa.table({"block": [0]}), blocks)

    code = main(["--artifact", str(tmp_path / "no-model"), "--blocks", str(blocks), "--format", "parquet",
                 "--output", str(tmp_path / "scores.json")])

    assert code == EXIT_UNUSABLE
    assert "blocks has no 'text' column" in capsys.readouterr().err  # read as Parquet, refused before any model
