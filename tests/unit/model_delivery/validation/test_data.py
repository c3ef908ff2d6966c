"""validate_dataset on real files: CSV and Parquet give one report, bad files say why, memory stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from model_delivery.validation.data import (
    ValidationFailed,
    iter_table,
    read_table,
    summarize_reference,
    validate_dataset,
)
from tests.unit.model_delivery.validation.frames import CATEGORICAL, CONFIG, SUITE, bad_frame, reference_frame

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated data and reference as CSV, and the same tables as Parquet (several row groups)."""
    root = tmp_path_factory.mktemp("tables")
    bad_frame().to_csv(root / "train.csv", index=False)
    reference_frame().to_csv(root / "reference.csv", index=False)
    read_table(root / "train.csv", "train.csv").to_parquet(root / "train.parquet", row_group_size=100)
    read_table(root / "reference.csv", "reference").to_parquet(root / "reference.parquet", row_group_size=250)
    return root


def test_parquet_and_csv_give_the_same_report(files: Path) -> None:
    reports = {}
    for suffix in (".csv", ".parquet"):
        reference = summarize_reference(files / f"reference{suffix}", "reference", categorical=CATEGORICAL,
                                        exclude=CONFIG.drift.exclude, chunk_rows=64)
        report = validate_dataset("train", files / f"train{suffix}", reference, SUITE, CONFIG,
                                  categorical=CATEGORICAL, chunk_rows=37)
        assert report.gx_result["meta"]["batches"] == {"count": 17, "rows": 600}
        reports[suffix] = report.summary()
    assert reports[".csv"] == reports[".parquet"]
    assert not reports[".csv"]["passed"] and reports[".csv"]["failed_expectations"]


def test_batches_are_numbered_as_rows_of_the_file(files: Path) -> None:
    for suffix in (".csv", ".parquet"):
        batches = list(iter_table(files / f"train{suffix}", "train", chunk_rows=70))
        assert [len(b) for b in batches] == [70] * 8 + [40]
        assert pd.concat(batches).index.tolist() == list(range(600))


def test_the_format_given_decides_how_a_file_is_read(files: Path, tmp_path: Path) -> None:
    """The stage passes the format the data's record names; the file's name is not consulted."""
    (tmp_path / "train-data").write_bytes((files / "train.parquet").read_bytes())
    batches = list(iter_table(tmp_path / "train-data", "train", chunk_rows=250, fmt="parquet"))
    pd.testing.assert_frame_equal(pd.concat(batches), read_table(files / "train.parquet", "train"))
    with pytest.raises(ValidationFailed, match="train: not a readable Parquet file"):
        list(iter_table(files / "train.csv", "train", fmt="parquet"))


BAD_FILES = [
    pytest.param("train.csv", b"", "train.csv: the file is empty", id="empty"),
    pytest.param("train.csv", b"a,b,c\n", "train.csv: the table has a header but no rows", id="header-only"),
    pytest.param("train.csv", b"a,b\n1,2\n" * 20 + b"1,2,3,4\n", "train.csv: not a readable CSV table", id="ragged"),
    pytest.param("train.csv", b"\xff\xfe\x00\x81" * 50, "train.csv: not a readable CSV table", id="binary"),
    pytest.param("train.parquet", b"a,b\n1,2\n", "train.parquet: not a readable Parquet file", id="csv-as-parquet"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES)
def test_bad_files_fail_with_a_message(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValidationFailed, match=message):
        list(iter_table(tmp_path / name, name, chunk_rows=7))


def test_parquet_without_rows(tmp_path: Path) -> None:
    reference_frame().head(0).to_parquet(tmp_path / "eval.parquet")
    with pytest.raises(ValidationFailed, match="eval.parquet: the table has columns but no rows"):
        list(iter_table(tmp_path / "eval.parquet", "eval.parquet"))


# The memory bound: a few hundred MB of CSV validated in a child process, whose own peak RSS is read
# from /proc (VmHWM). Not ru_maxrss of RUSAGE_CHILDREN: that is the largest of every child this
# process ever waited for, and Linux carries the parent's peak into a vforked child's ru_maxrss
# at exec (see bench/_common.py vm_hwm_kib).
COLUMNS = 10
BLOCK = 50_000
CHUNK = 100_000
TARGET_BYTES = 200 * 2**20
GROWTH_BOUND = 128 * 2**20

CHILD = textwrap.dedent("""
    import json, logging, sys
    from pathlib import Path

    def peak():
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))

    logging.disable(logging.INFO)
    mode, data, reference = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if mode == "whole":
        import pandas as pd
        before = peak()
        rows = len(pd.read_csv(data))
    else:
        from model_delivery.spec import ValidationSpec
        from model_delivery.validation.data import summarize_reference, validate_dataset
        suite, config = json.loads(sys.argv[4]), ValidationSpec.model_validate(json.loads(sys.argv[5]))
        summary = summarize_reference(reference, "reference", categorical=[], exclude=config.drift.exclude)
        validate_dataset("warm-up", reference, summary, suite, config, categorical=[])  # GX's lazy imports
        before = peak()
        report = validate_dataset("big", data, summary, suite, config, categorical=[], chunk_rows=int(mode))
        assert report.passed, report.problems()
        rows = report.rows
    print(json.dumps({"before": before, "peak": peak(), "rows": rows}))
""")


def _write_big_csv(path: Path, reference: Path) -> int:
    """Stream rows to ``path`` until it holds TARGET_BYTES: a unique id and COLUMNS-1 floats per row."""
    rng = np.random.default_rng(5)
    templates = []
    for _ in range(4):  # float columns formatted once per template, ids written per block
        floats = pd.DataFrame(rng.normal(50, 10, (BLOCK, COLUMNS - 1)).round(3), columns=[f"f{i}" for i in range(1, COLUMNS)])
        templates.append(floats.to_csv(header=False, index=False).splitlines())
    pd.concat([pd.Series(range(2000), name="id"), pd.DataFrame(
        [line.split(",") for line in templates[0][:2000]], columns=[f"f{i}" for i in range(1, COLUMNS)]).astype(float)],
        axis=1).to_csv(reference, index=False)
    rows = 0
    with path.open("w") as out:
        out.write("id," + ",".join(f"f{i}" for i in range(1, COLUMNS)) + "\n")
        while out.tell() < TARGET_BYTES:
            lines = templates[(rows // BLOCK) % len(templates)]
            out.write("\n".join(f"{rows + i},{line}" for i, line in enumerate(lines)) + "\n")
            rows += BLOCK
    return rows


def _child(*args: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_memory_is_bounded_whatever_the_size(tmp_path: Path) -> None:
    data, reference = tmp_path / "big.csv", tmp_path / "reference.csv"
    rows = _write_big_csv(data, reference)
    columns = ["id"] + [f"f{i}" for i in range(1, COLUMNS)]
    suite = {"name": "big", "expectations": [
        {"type": "expect_table_columns_to_match_ordered_list", "kwargs": {"column_list": columns}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": rows}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        *({"type": "expect_column_values_to_be_between", "kwargs": {"column": c, "min_value": -100, "max_value": 200}}
          for c in columns[1:]),
    ]}
    config = {"suite": "suite.json", "reference": "reference.csv", "drift": {"ks_max": 0.2, "exclude": ["id"]}}

    chunked = _child(str(CHUNK), str(data), str(reference), json.dumps(suite), json.dumps(config))
    whole = _child("whole", str(data), str(reference))

    assert chunked["rows"] == whole["rows"] == rows
    frame_bytes = rows * COLUMNS * 8  # what holding the table as one frame takes, at least
    assert frame_bytes > 1.5 * GROWTH_BOUND
    assert whole["peak"] - whole["before"] > GROWTH_BOUND, "the bound would not tell chunked from whole"
    assert chunked["peak"] - chunked["before"] < GROWTH_BOUND, (
        f"validating {data.stat().st_size / 2**20:.0f} MiB grew the peak RSS by "
        f"{(chunked['peak'] - chunked['before']) / 2**20:.0f} MiB (bound {GROWTH_BOUND / 2**20:.0f} MiB)")


def test_an_expectation_that_could_not_run_says_so_and_why(files: Path) -> None:
    """A missing column and a non-numeric one: GX raises inside the metric (1.24 nests the exception under its
    metric id); the report says the check could not run and names the error, never 'observed None'."""
    from model_delivery.validation.data import describe_failure

    suite = {"name": "cannot-run", "expectations": [
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "not_a_column", "min_value": 0}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "code", "min_value": 0}},
    ]}
    reference = summarize_reference(files / "reference.csv", "reference", categorical=CATEGORICAL,
                                    exclude=CONFIG.drift.exclude)
    report = validate_dataset("train", files / "train.csv", reference, suite, CONFIG, categorical=CATEGORICAL)

    failures = {f["column"]: f for f in report.summary()["failed_expectations"]}
    assert set(failures) == {"not_a_column", "code"}
    for failure in failures.values():
        line = describe_failure(failure)
        assert "could not run" in line and "observed None" not in line, line
        assert failure["error"], failure
    assert "not_a_column" in failures["not_a_column"]["error"]
