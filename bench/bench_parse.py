"""Parse time of each DAG file in dags/ against a trivial one-task DAG file.

Every measurement is a fresh Python process (cold: nothing imported yet, as for a DAG
processor starting on a file) that imports ``DagBag`` first and then times only
``DagBag(dag_folder=<file>)``: importing the file, which for ``dags/release.py`` means
importing the model_delivery library and reading and validating every model spec, plus
DagBag's own checks. In-process re-imports would be cached, hence the processes.

Before timing, the child calls ``gc.freeze()``, as Airflow's DAG processor manager does
before it forks the processes that parse (dag_processing/manager.py, "to prevent COW"):
the objects of the Airflow import are then never scanned by the garbage collector. Without
it, a DAG file that allocates enough to trigger a full collection pays for scanning the
whole Airflow heap (about 100 ms here), which the trivial DAG never does, and which a real
DAG processor does not pay.

Two bytecode settings are measured:

* ``bytecode``   (the headline): Python's bytecode cache is on, written to a private
  PYTHONPYCACHEPREFIX inside the temp dir and warmed by one untimed run per file, like a
  deployed DAG processor whose .pyc files exist.
* ``no-bytecode`` (information): PYTHONDONTWRITEBYTECODE=1 as in this project's dev shell,
  so the project's own modules and the DAG file are compiled from source at every parse
  (the venv's own .pyc files are still used).

Ratio = median(parse of the DAG file) / median(parse of the trivial DAG), same mode, same run.

    .venv/bin/python bench/bench_parse.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PROJECT,
    copy_models,
    finish,
    fmt_s,
    isolated_env,
    median,
    ratio_line,
    table,
    workdir,
)

NAME = "parse"
TRIVIAL = "trivial_one_task.py"
TRIVIAL_SOURCE = '''"""A trivial DAG: one task. The baseline of bench_parse.py."""

from datetime import datetime

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def trivial_one_task():
    @task
    def hello() -> int:
        return 1

    hello()


trivial_one_task()
'''

# Runs in the fresh child: import DagBag (untimed), then time only the DagBag construction.
CHILD_PARSE = r"""
import gc, json, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
gc.freeze()  # as the DAG processor's manager does before it forks the parsing processes
t1 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t2 = time.perf_counter()
with open(sys.argv[2], "w") as out:
    json.dump({"import_dagbag_s": t1 - t0, "parse_s": t2 - t1, "dags": sorted(bag.dag_ids),
               "tasks": sum(len(d.tasks) for d in bag.dags.values()),
               "errors": {str(k): str(v)[-1500:] for k, v in bag.import_errors.items()}}, out)
"""

# Where the time of dags/release.py goes (information): the same steps, one by one.
CHILD_BREAKDOWN = r"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag  # the same starting point as the parse child
import gc
gc.freeze()
t0 = time.perf_counter()
from airflow.sdk import DAG, BaseOperator, Param  # what the library needs from Airflow
t1 = time.perf_counter()
import model_delivery.dag_factory as factory
t2 = time.perf_counter()
from model_delivery.settings import get_settings
from model_delivery.spec import discover_specs
specs, errors = discover_specs(get_settings().models_dir)
t3 = time.perf_counter()
dags = factory.release_dags()
t4 = time.perf_counter()
with open(sys.argv[2], "w") as out:
    json.dump({"airflow.sdk DAG/BaseOperator/Param (after DagBag)": t1 - t0, "import model_delivery.dag_factory": t2 - t1,
               "discover_specs (read+validate specs)": t3 - t2, "release_dags() (specs again + build DAGs)": t4 - t3,
               "dags": sorted(dags), "errors": errors}, out)
"""


def run_child(code: str, target: Path, env: dict[str, str], out: Path) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(target), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"parse child for {target.name} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    result["process_wall_s"] = wall
    if result.get("errors"):
        raise RuntimeError(f"{target.name} has import errors: {result['errors']}")
    if not result.get("dags"):
        raise RuntimeError(f"{target.name} produced no DAG: the parse did not load it")
    return result


def measure(files: list[Path], env: dict[str, str], repeats: int, work: Path, breakdown_target: Path | None,
            label: str) -> dict[str, Any]:
    """Warm up once per file (untimed), then ``repeats`` rounds over all files, interleaved."""
    out = work / "child.json"
    print(f"[{label}] warm-up run per file (untimed) ...", flush=True)
    for f in files:
        run_child(CHILD_PARSE, f, env, out)
    samples: dict[str, list[dict[str, Any]]] = {f.name: [] for f in files}
    breakdown: list[dict[str, Any]] = []
    for i in range(repeats):
        for f in files:
            samples[f.name].append(run_child(CHILD_PARSE, f, env, out))
        if breakdown_target is not None:
            breakdown.append(run_child(CHILD_BREAKDOWN, breakdown_target, env, out))
        print(f"[{label}] round {i + 1}/{repeats}: " + ", ".join(
            f"{name} {fmt_s(s[-1]['parse_s'])}" for name, s in samples.items()), flush=True)
    summary = {}
    for name, runs in samples.items():
        parse = [r["parse_s"] for r in runs]
        summary[name] = {
            "dags": runs[0]["dags"], "tasks": runs[0]["tasks"],
            "median_parse_s": median(parse), "min_parse_s": min(parse), "max_parse_s": max(parse),
            "median_process_wall_s": median([r["process_wall_s"] for r in runs]),
            "median_import_dagbag_s": median([r["import_dagbag_s"] for r in runs]),
            "samples_parse_s": parse,
        }
    result: dict[str, Any] = {"files": summary}
    if breakdown:
        keys = [k for k in breakdown[0] if k not in ("dags", "errors", "process_wall_s")]
        result["breakdown_median_s"] = {k: median([b[k] for b in breakdown]) for k in keys}
    return result


def report(label: str, result: dict[str, Any]) -> dict[str, float]:
    files = result["files"]
    base = files[TRIVIAL]["median_parse_s"]
    ratios = {}
    rows = []
    for name, s in files.items():
        ratio = s["median_parse_s"] / base
        if name != TRIVIAL:
            ratios[name] = ratio
        rows.append([name, len(s["dags"]), s["tasks"], fmt_s(s["median_parse_s"]), fmt_s(s["min_parse_s"]),
                     fmt_s(s["max_parse_s"]), f"{ratio:.2f}x", fmt_s(s["median_process_wall_s"])])
    print(f"\nDagBag parse, mode {label} ({len(files[TRIVIAL]['samples_parse_s'])} cold processes per file)")
    print(table(["file", "dags", "tasks", "median", "min", "max", "vs trivial", "process wall"], rows))
    if "breakdown_median_s" in result:
        print("\nwhere a parse of release.py goes (separate processes, medians; information):")
        print(table(["step", "median"], [[k, fmt_s(v)] for k, v in result["breakdown_median_s"].items()]))
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats and only the headline mode")
    parser.add_argument("--repeats", type=int, default=None, help="cold processes per file (default 7, quick 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (debugging)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    started = time.perf_counter()

    with workdir(NAME, keep=args.keep) as work:
        dags = work / "dags"
        shutil.copytree(PROJECT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        originals = sorted(p for p in dags.glob("*.py") if p.name != "__init__.py")
        (dags / TRIVIAL).write_text(TRIVIAL_SOURCE)
        files = [dags / TRIVIAL, *originals]
        models = copy_models(work / "models")
        base_env = isolated_env(work, models_dir=models, dags_folder=dags)
        release_file = dags / "release.py" if (dags / "release.py").exists() else None

        modes = {"bytecode": {**{k: v for k, v in base_env.items() if k != "PYTHONDONTWRITEBYTECODE"},
                              "PYTHONPYCACHEPREFIX": str(work / "pycache")}}
        if not args.quick:
            modes["no-bytecode"] = {**{k: v for k, v in base_env.items() if k != "PYTHONPYCACHEPREFIX"},
                                    "PYTHONDONTWRITEBYTECODE": "1"}
        results = {}
        ratios = {}
        for label, env in modes.items():
            results[label] = measure(files, env, repeats, work, release_file if label == "bytecode" else None, label)
        for label in modes:
            ratios[label] = report(label, results[label])

    elapsed = time.perf_counter() - started
    lines = []
    for name, ratio in ratios["bytecode"].items():
        extra = ""
        if "no-bytecode" in ratios:
            extra = f"; without bytecode cache {ratios['no-bytecode'][name]:.2f}x"
        lines.append(ratio_line(f"parse_{Path(name).stem}", ratio,
                                f"DagBag parse of dags/{name} / trivial one-task DAG, median of {repeats} "
                                f"cold processes{extra}"))
    return finish(NAME, {"repeats": repeats, "quick": args.quick, "seconds": elapsed, "modes": results,
                                "ratios": ratios}, lines, elapsed)


if __name__ == "__main__":
    sys.exit(main())
