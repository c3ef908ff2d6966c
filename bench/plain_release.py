"""The release stages as a plain Python script: the baseline of bench_release.py.

No scheduler, no task runner, no XCom, no metadata DB: one process builds a
``ReleaseContext`` and calls the stage functions of ``model_delivery.release`` in the
DAG's order: build → [detect_change] → [validate_data] → evaluate → gate → deploy_staging →
smoke → deploy_production → verify (smoke against production) → promote. The bracketed
steps run when the library has them (``has_changes``, ``validate_data``); from an empty
state ``has_changes`` is always true. There is no approval step: bench_release.py turns
``approval: required`` off in its copy of the spec. On a failure after a deploy started
it rolls back, like the DAG, and exits 1.

The caller sets the environment (MODEL_DELIVERY_HOME, MODEL_DELIVERY_MODELS_DIR, an
isolated AIRFLOW_HOME). Writes a JSON summary (digest, front URL, seconds per stage) to --out.

    python bench/plain_release.py --model breast_cancer --out result.json [--reason bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

T0 = time.perf_counter()


def log(message: str, *args: Any) -> None:
    print(message % args if args else message, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="breast_cancer")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reason", default="bench")
    args = parser.parse_args()

    from model_delivery import release as stages

    imported = time.perf_counter()
    rc = stages.ReleaseContext(
        model=args.model,
        run_id="plain__" + datetime.now(UTC).isoformat(timespec="milliseconds"),
        dag_id=f"release__{args.model}",
        conf={"reason": args.reason, "force": False},
        log=log,
    )
    seconds: dict[str, float] = {}
    summary: dict[str, Any] = {"run_id": rc.run_id, "stages": seconds}

    def timed(name: str, fn: Any, *fn_args: Any) -> Any:
        start = time.perf_counter()
        log("== %s", name)
        result = fn(rc, *fn_args)
        seconds[name] = time.perf_counter() - start
        return result

    deployed = False
    try:
        candidate = timed("build", stages.build)
        if hasattr(stages, "has_changes") and not stages.has_changes(candidate, rc.conf):
            raise RuntimeError("detect_change: nothing changed, the release would end here (not a benchmark run)")
        if hasattr(stages, "validate_data"):  # the DAG runs it before evaluate
            timed("validate_data", stages.validate_data, candidate)
        evaluation = timed("evaluate", stages.evaluate, candidate)
        timed("gate", stages.gate, candidate, evaluation)
        deployed = True
        staging = timed("deploy_staging", stages.deploy_staging, candidate)
        timed("smoke", stages.smoke, candidate, staging)
        production = timed("deploy_production", stages.deploy_production)
        timed("verify", stages.smoke, candidate, production)
        timed("promote", stages.promote, candidate)
        if hasattr(stages, "retire"):  # its own task after promote
            timed("retire", stages.retire)
    except Exception as exc:
        traceback.print_exc()
        summary["error"] = f"{type(exc).__name__}: {exc}"
        if deployed:
            summary["rollback"] = stages.rollback(rc)
        Path(args.out).write_text(json.dumps(summary, indent=2, default=str))
        return 1
    summary.update(digest=candidate["digest"], version=candidate["version"], front_url=production["url"],
                   import_seconds=imported - T0, total_seconds=time.perf_counter() - T0)
    Path(args.out).write_text(json.dumps(summary, indent=2, default=str))
    log("released %s version %s (%s) at %s", args.model, candidate["version"], candidate["digest"], production["url"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
