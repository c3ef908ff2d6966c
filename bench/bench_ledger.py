"""The deployment ledger's cost per release, and the time from a killed step to consistent production.

1. **Overhead.** The ledger calls one local-target release makes (lease acquire and heartbeats,
   the locked state of stage, shift and retire with their saves, the journal entries of each
   change, the aliases entry of promote, the lease given back), against the same release's
   state changes as the per-target state files did them before (``flock``, a JSON read, an
   atomic JSON write, the lease file). Both run here, on this disk; SQLite is the embedded
   default. RATIO = ledger / files, per release; the absolute figure is what matters: it
   should be noise beside a release (seconds).
2. **Recovery.** The fault suites of the local target (``tests/unit/model_delivery/test_local_faults.py``)
   and the Ansible target (``tests/integration/test_ansible_faults.py``, two SSH hosts behind HAProxy)
   kill the step's process with SIGKILL at each point, then run what Airflow runs next; this prints,
   per point, the seconds from the kill to consistent production (when the next task starts at
   once; Airflow's retry delay comes on top), and a cold deploy of the same model for scale.
   RATIO = median recovery / median cold deploy, per target.

    .venv/bin/python bench/bench_ledger.py [--quick] [--releases N] [--targets local ansible]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include" / "serving"))

from _common import PROJECT, finish, median, ratio_line, table, workdir  # noqa: E402

STATE = {"front": {"host": "127.0.0.1", "port": 8000, "pid": 1, "state_file": "/x/front.json"},
         "active": {"run_id": "r", "version": "1", "digest": "sha256:" + "0" * 64, "host": "127.0.0.1", "port": 9000,
                    "pid": 2, "url": "http://127.0.0.1:9000", "log": "/x/v1.log", "started_at": "t", "ready": True},
         "standby": None, "candidates": {}}


def ledger_release(ledger: object, model: str, run_id: str) -> None:
    """The ledger calls of one local release, in order (see deploy/local/target.py and release.py)."""
    from model_delivery.ledger import Ledger

    assert isinstance(ledger, Ledger)
    ledger.acquire(model, run_id, "release__m", alive=lambda lease: False)
    ledger.holder(model)  # heartbeating
    with ledger.locked_state(model, "local") as state:  # stage
        state.update(json.loads(json.dumps(STATE)))
        ledger.pending(model, "local")
        entry = ledger.intend(model, "local", run_id, "start", {"port": 9001})
        state["candidates"][run_id] = dict(STATE["active"], port=9001, ready=False)
        ledger.save_state(model, "local", state)
        state["candidates"][run_id]["ready"] = True
        ledger.save_state(model, "local", state)
        ledger.done(entry)
    ledger.heartbeat(model, run_id)  # deploy_production
    ledger.holder(model)
    with ledger.locked_state(model, "local") as state:  # shift
        ledger.pending(model, "local")
        entry = ledger.intend(model, "local", run_id, "switch", {"to": state["candidates"][run_id]})
        state["standby"], state["active"] = state["active"], state["candidates"].pop(run_id)
        ledger.save_state(model, "local", state)
        ledger.done(entry)
    ledger.heartbeat(model, run_id)  # promote
    ledger.done(ledger.intend(model, "registry", run_id, "aliases", {"to": "2"}, {"production": "1"}))
    ledger.holder(model)  # retire
    with ledger.locked_state(model, "local") as state:
        ledger.pending(model, "local")
        ledger.done(ledger.intend(model, "local", run_id, "stop", {"pid": 2, "port": 9000}))
        state["standby"] = None
    ledger.release(model, run_id)
    ledger.release(model, run_id)  # record


@contextlib.contextmanager
def _flocked(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _save(path: Path, doc: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, path)


def file_release(state_dir: Path, run_id: str) -> None:
    """The same release's state changes as the state files did them (statefile.py, lease.py before the ledger)."""
    state_path, lease_path, lock, lease_lock = (state_dir / n for n in ("state.json", "lease.json", "deploy.lock",
                                                                        "lease.lock"))

    def locked_step(change) -> None:  # type: ignore[no-untyped-def]
        with _flocked(lock):
            state = json.loads(state_path.read_text()) if state_path.exists() else json.loads(json.dumps(STATE))
            change(state)
            _save(state_path, state)

    with _flocked(lease_lock):
        if lease_path.exists():
            json.loads(lease_path.read_text())
        _save(lease_path, {"run_id": run_id, "dag_id": "release__m", "since": "t", "took_over": None})
    locked_step(lambda s: s["candidates"].update({run_id: dict(STATE["active"], port=9001)}))
    locked_step(lambda s: s.update(standby=s["active"], active=s["candidates"].pop(run_id)))
    locked_step(lambda s: s.update(standby=None))
    with _flocked(lease_lock):
        json.loads(lease_path.read_text())
        lease_path.unlink()


def overhead(work: Path, releases: int) -> dict[str, float]:
    from model_delivery.ledger import Ledger

    ledger = Ledger(f"sqlite:///{work / 'ledger.db'}")
    files = work / "files"
    files.mkdir()
    ledger_release(ledger, "warm", "warm-up")
    file_release(files, "warm-up")
    ledger_s, file_s = [], []
    for n in range(releases):  # alternate, so drift hits both alike
        start = time.perf_counter()
        ledger_release(ledger, "m", f"run-{n}")
        ledger_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        file_release(files, f"run-{n}")
        file_s.append(time.perf_counter() - start)
    return {"ledger_ms": median(ledger_s) * 1000, "files_ms": median(file_s) * 1000, "releases": releases,
            "journal_entries_per_release": len(ledger.journal("m")) / releases}


SUITES = {  # target: the fault suite, and its table's row (point, then, consistent, ..., recovery s, ...)
    "local": ("tests/unit/model_delivery/test_local_faults.py",
              r"^(?P<point>\S+:\S+)\s+(?P<then>\w+)\s+(?P<consistent>True|False)\s+\d+\s+(?P<recovery_s>[\d.]+)"
              r"\s+(?P<deploy_s>[\d.]+)$"),
    "ansible": ("tests/integration/test_ansible_faults.py",
                r"^(?P<point>\S+:\S+)\s+(?P<then>\w+)\s+(?P<consistent>True|False)\s+(?P<next>True|False|None)\s+"
                r"(?P<recovery_s>[\d.]+)$"),
}
COLD = {"local": None, "ansible": r"a cold release of \d+ hosts: ([\d.]+) s"}


def recovery(target: str) -> list[dict[str, str]]:
    """Run the target's fault suite; its rows, each with the cold deploy it is set against (``deploy_s``)."""
    path, row = SUITES[target]
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", path]
    out = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"the {target} fault suite failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}")
    cold = re.search(COLD[target], out.stdout) if COLD[target] else None
    rows = []
    for line in out.stdout.splitlines():
        match = re.match(row, line.strip())
        if match:
            found = match.groupdict()
            if cold:
                found["deploy_s"] = cold.group(1)
            rows.append({"target": target, **found})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer releases, no fault suite")
    parser.add_argument("--releases", type=int, default=None)
    parser.add_argument("--targets", nargs="+", choices=sorted(SUITES), default=sorted(SUITES),
                        help="the fault suites to run (the Ansible one starts an SSH fleet: minutes)")
    args = parser.parse_args()
    started = time.perf_counter()
    with workdir("ledger") as work:
        figures = overhead(work, args.releases or (20 if args.quick else 200))
    print(table(["per release", "median"], [["ledger (SQLite)", f"{figures['ledger_ms']:.2f} ms"],
                                              ["state files + flock", f"{figures['files_ms']:.2f} ms"]]))
    lines = [ratio_line("ledger_overhead", figures["ledger_ms"] / figures["files_ms"],
                        f"ledger {figures['ledger_ms']:.1f} ms per release against state files "
                        f"{figures['files_ms']:.2f} ms; {figures['journal_entries_per_release']:.0f} journal "
                        "entries each")]
    rows: list[dict[str, str]] = []
    for target in [] if args.quick else args.targets:
        found = recovery(target)
        rows += found
        print(f"\n{target}: from a SIGKILL to consistent production, per kill point")
        print(table(["point", "then", "consistent", "recovery s", "cold deploy s"],
                    [[r["point"], r["then"], r["consistent"], r["recovery_s"], r["deploy_s"]] for r in found]))
        rec = median([float(r["recovery_s"]) for r in found])
        cold = median([float(r["deploy_s"]) for r in found])
        lines.append(ratio_line(f"kill_to_consistent_{target}", rec / cold,
                                f"{target}: median {rec:.2f} s (max {max(float(r['recovery_s']) for r in found):.2f} s) "
                                f"from a SIGKILL to consistent production over {len(found)} points "
                                f"({sum(r['consistent'] != 'True' for r in found)} inconsistent), against a cold "
                                f"deploy of {cold:.2f} s"))
    return finish("ledger", {**figures, "recovery": rows}, lines, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
