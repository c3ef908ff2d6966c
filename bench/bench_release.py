"""Release wall time: ``airflow dags test release__breast_cancer`` against the same stages as a plain script.

Both sides do the same release from an empty state: each run gets a fresh
MODEL_DELIVERY_HOME (artifact store, MLflow SQLite, deploy state) and a fresh copy of the
model specs with free ports; the Airflow metadata DB (SQLite, in the temp dir) is
migrated once before, untimed. Each run is a fresh process, timed from start to exit:

* ``dags test``: ``airflow dags test release__breast_cancer -c '{"reason": "bench"}'``
  (CLI start, DAG parse, the DagRun and its task instances in the metadata DB, XCom,
  every operator, the release record);
* ``plain``: ``bench/plain_release.py``, the stage functions called in order.

A run counts only if it succeeded: exit code 0, for ``dags test`` a release record whose
outcome is ``released``, and for both the model's stable front address answering every
golden request from the released digest. The model servers and the front are stopped
after each run. Runs alternate (AB BA AB ...) so drift hits both sides alike.

Ratio = median wall(dags test) / median wall(plain); the best-run ratio (min / min) is
printed beside it, as it is less sensitive to other load on the machine.

    .venv/bin/python bench/bench_release.py [--quick] [--repeats N] [--model breast_cancer]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BENCH,
    VENV_BIN,
    copy_models,
    finish,
    fmt_s,
    isolated_env,
    kill_processes_under,
    median,
    ratio_line,
    table,
    workdir,
)

NAME = "release"
KINDS = ("dags_test", "plain")
LABELS = {"dags_test": "airflow dags test", "plain": "plain script"}


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def check_front(models: Path, model: str, digest: str) -> dict[str, Any]:
    """Every golden request through the stable front port must be answered by ``digest`` as expected."""
    import httpx
    import yaml

    spec = yaml.safe_load((models / model / "model.yaml").read_text())
    local = spec["deploy"]["local"]
    url = f"http://{local.get('host', '127.0.0.1')}:{local['port']}"
    cases = json.loads((models / model / spec.get("smoke", {}).get("golden", "golden.json")).read_text())
    for case in cases:
        response = httpx.post(f"{url}/v2/models/{model}/infer", json={"inputs": case["inputs"]}, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"front {url} answered HTTP {response.status_code} to {case['name']!r}: {response.text[:300]}")
        served = response.headers.get("x-model-digest")
        if served != digest:
            raise RuntimeError(f"front {url} answered from {served}, expected the released {digest}")
        expect = case["expect"]
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        out = outputs.get(expect["output"])
        if out is None:
            raise RuntimeError(f"front {url}: output {expect['output']!r} missing for {case['name']!r}")
        if "equals" in expect and out["data"] != expect["equals"]:
            raise RuntimeError(f"front {url}: {case['name']!r} gave {out['data']}, expected {expect['equals']}")
        if "shape" in expect and list(out["shape"]) != expect["shape"]:
            raise RuntimeError(f"front {url}: {case['name']!r} shape {out['shape']}, expected {expect['shape']}")
    return {"url": url, "golden_requests": len(cases)}


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def dags_test_outcome(home: Path, model: str, log: Path) -> dict[str, Any]:
    records = list((home / "artifacts" / model / "releases").glob("*/release.json"))
    if len(records) != 1:
        raise RuntimeError(f"expected one release record under {home}, found {records}; log:\n{tail(log)}")
    record = json.loads(records[0].read_text())
    if record.get("outcome") != "released":
        raise RuntimeError(f"dags test finished with outcome {record.get('outcome')!r}: {record.get('reasons')}; "
                           f"log:\n{tail(log)}")
    stages = {name: entry["seconds"] for name, entry in record["stages"].items() if entry.get("status") == "success"}
    return {"digest": record["artifact"]["digest"], "version": record["artifact"].get("version"),
            "run_id": record["run_id"], "stages": stages}


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")
# (phase name, log text that ends it); a phase starts where the previous one ended.
DAGS_TEST_PHASES = (
    ("CLI start-up (imports) until the first log line", None),
    ("parse DAGs, sync to DB, create the DagRun", "[DAG TEST] starting task_id="),
    ("in-process execution API up, first task started", "Task started"),
    ("tasks (first start until DagRun finished)", "DagRun Finished"),
)


def log_phases(log: Path, start_epoch: float, end_epoch: float) -> dict[str, float]:
    """Where the wall time of ``dags test`` went, from the timestamps of its log lines (information)."""
    from datetime import datetime

    marks: list[float] = [start_epoch]
    names = []
    lines = log.read_text(errors="replace").splitlines()
    times = []
    for line in lines:
        m = LOG_TIME.match(line)
        if m:
            times.append((datetime.fromisoformat(m.group(1) + "+00:00").timestamp(), line))
    if not times:
        return {}
    for name, needle in DAGS_TEST_PHASES:
        if needle is None:
            found = times[0][0]
        else:
            hits = [t for t, line in times if needle in line]
            if not hits:
                return {}
            found = hits[-1] if needle == "DagRun Finished" else hits[0]
        marks.append(found)
        names.append(name)
    marks.append(end_epoch)
    names.append("after the run finished until exit (teardown)")
    return {name: marks[i + 1] - marks[i] for i, name in enumerate(names)}


def no_approval(models: Path, model: str) -> bool:
    """A benchmark cannot wait for a human: turn ``approval: required`` off in this copy of the spec."""
    import yaml

    path = models / model / "model.yaml"
    spec = yaml.safe_load(path.read_text())
    if spec.get("approval") != "required":
        return False
    spec["approval"] = "none"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return True


def one_run(kind: str, index: int, work: Path, model: str) -> dict[str, Any]:
    run_dir = work / "runs" / f"{index}-{kind}"
    models = copy_models(run_dir / "models")
    if no_approval(models, model) and index == 0:
        print(f"  NOTE: the {model} spec requires approval; this benchmark's copy sets approval: none", flush=True)
    home = run_dir / "home"
    env = isolated_env(work, md_home=home, models_dir=models)
    log = run_dir / "output.log"
    if kind == "dags_test":
        cmd = [str(VENV_BIN / "airflow"), "dags", "test", f"release__{model}", "-c", json.dumps({"reason": "bench"})]
    else:
        cmd = [sys.executable, str(BENCH / "plain_release.py"), "--model", model, "--out", str(run_dir / "plain.json"),
               "--reason", "bench"]
    print(f"  run {index + 1} {LABELS[kind]} ... ", end="", flush=True)
    start, start_epoch = time.perf_counter(), time.time()
    with open(log, "wb") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200, cwd=run_dir)
    wall = time.perf_counter() - start
    end_epoch = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{LABELS[kind]} exited with {proc.returncode}; last lines of {log}:\n{tail(log)}")
    if kind == "dags_test":
        outcome = dags_test_outcome(home, model, log)
        outcome["phases"] = log_phases(log, start_epoch, end_epoch)
    else:
        plain = json.loads((run_dir / "plain.json").read_text())
        staged = sum(plain["stages"].values())
        outcome = {"digest": plain["digest"], "version": plain["version"], "run_id": plain["run_id"],
                   "stages": plain["stages"],
                   "phases": {"interpreter start-up and imports": plain["import_seconds"],
                              "stages": staged,
                              "between stages": plain["total_seconds"] - plain["import_seconds"] - staged,
                              "after the last stage until exit (teardown; + ~0.05 s interpreter start)":
                                  wall - plain["total_seconds"]}}
    front = check_front(models, model, outcome["digest"])
    stopped = kill_processes_under(run_dir)
    port = int(front["url"].rsplit(":", 1)[1])
    for _ in range(50):
        if port_free(port):
            break
        time.sleep(0.1)
    load = os.getloadavg()[0]
    print(f"{wall:.1f} s, released {outcome['digest'][:19]}…, front answered {front['golden_requests']} golden "
          f"requests, stopped {stopped} processes (load avg {load:.2f})", flush=True)
    return {"kind": kind, "wall_s": wall, "front": front, "stopped_processes": stopped, "load_avg_1min": load,
            **outcome}


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[list[str]]]:
    by_kind = {k: [r for r in runs if r["kind"] == k] for k in KINDS}
    stages: list[str] = []
    for r in by_kind["plain"] + by_kind["dags_test"]:  # the plain script runs them in the DAG's order
        stages += [s for s in r["stages"] if s not in stages]
    summary: dict[str, Any] = {}
    for kind, rs in by_kind.items():
        walls = [r["wall_s"] for r in rs]
        per_stage = {s: median([r["stages"].get(s, 0.0) for r in rs]) for s in stages}
        staged = median([sum(r["stages"].values()) for r in rs])
        phases = {p: median([r["phases"].get(p, 0.0) for r in rs]) for p in rs[0].get("phases", {})}
        summary[kind] = {"median_wall_s": median(walls), "min_wall_s": min(walls), "walls_s": walls, "stages_median_s": per_stage,
                         "sum_of_stages_median_s": staged, "outside_stages_median_s": median(walls) - staged,
                         "phases_median_s": phases}
    rows = [[s, *(fmt_s(summary[k]["stages_median_s"][s]) if any(s in r["stages"] for r in by_kind[k]) else "-"
                  for k in KINDS)] for s in stages]
    rows.append(["sum of stages", *(fmt_s(summary[k]["sum_of_stages_median_s"]) for k in KINDS)])
    rows.append(["outside the stages", *(fmt_s(summary[k]["outside_stages_median_s"]) for k in KINDS)])
    rows.append(["WALL (median)", *(fmt_s(summary[k]["median_wall_s"]) for k in KINDS)])
    rows.append(["wall (best run)", *(fmt_s(summary[k]["min_wall_s"]) for k in KINDS)])
    rows.append(["wall, every run", *(" / ".join(f"{w:.1f}" for w in summary[k]["walls_s"]) for k in KINDS)])
    return summary, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each side (default 3, quick 1)")
    parser.add_argument("--model", default="breast_cancer")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (debugging)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    started = time.perf_counter()

    with workdir(NAME, keep=args.keep) as work:
        env = isolated_env(work, md_home=work / "md-unused")
        print("airflow db migrate (untimed set-up) ...", flush=True)
        start = time.perf_counter()
        migrate = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True,
                                 text=True, timeout=600)
        migrate_s = time.perf_counter() - start
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}\n{migrate.stderr[-3000:]}")
        print(f"  done in {migrate_s:.1f} s", flush=True)
        runs = []
        for i in range(repeats):
            order = KINDS if i % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                runs.append(one_run(kind, i, work, args.model))

    summary, rows = summarise(runs)
    print(f"\nrelease of {args.model} from an empty state, median of {repeats} run(s) each "
          "(stage seconds as each side timed them)")
    print(table(["stage", LABELS["dags_test"], LABELS["plain"]], rows))
    for kind in KINDS:
        if summary[kind]["phases_median_s"]:
            source = "its log timestamps" if kind == "dags_test" else "its own timers"
            print(f"\nwhere the wall of {LABELS[kind]} goes (medians, from {source}):")
            print(table(["phase", "seconds"], [[p, fmt_s(v)] for p, v in summary[kind]["phases_median_s"].items()]))
    missing = set(summary["dags_test"]["stages_median_s"]) ^ set(summary["plain"]["stages_median_s"])
    if missing:
        print(f"NOTE: stages run by only one side: {sorted(missing)}")
    ratio = summary["dags_test"]["median_wall_s"] / summary["plain"]["median_wall_s"]
    best = summary["dags_test"]["min_wall_s"] / summary["plain"]["min_wall_s"]
    lines = [ratio_line(NAME, ratio, f"wall of airflow dags test release__{args.model} / the same stages as a plain "
                                     f"script, median of {repeats}, both from an empty state; best-run ratio {best:.2f}x")]
    elapsed = time.perf_counter() - started
    return finish(NAME, {"model": args.model, "repeats": repeats, "quick": args.quick, "seconds": elapsed,
                                "db_migrate_s": migrate_s, "summary": summary, "ratio": ratio, "best_run_ratio": best, "runs": runs}, lines, elapsed)


if __name__ == "__main__":
    sys.exit(main())
