"""Fault injection on the local target: ``kill -9`` of the step's process at each step boundary and
inside the switch, then what Airflow would do next (a retry of the step, or the rollback task).

After each kill the invariant must hold: what answers through the front, the ledger's active
version and what the release decided (production) agree; no server the ledger does not name
survives; no journal entry is left half done; and the next release succeeds. Each kill runs one
step in a subprocess (the cheapest place to kill); the whole-DAG kill is in test_release.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from model_delivery.deploy import Candidate
from model_delivery.deploy.local.spec import LocalTargetSpec
from model_delivery.deploy.local.target import LocalTarget
from model_delivery.ledger import Ledger
from tests.helpers.faults import Point
from tests.helpers.models import free_port
from tests.helpers.processes import kill_matching
from tests.unit.model_delivery.test_local_target import MODEL, infer

if TYPE_CHECKING:
    from pathlib import Path

    from tests.unit.model_delivery.conftest import Builds

# The step runs in its own process; KILL names where it SIGKILLs itself.
STEP = """
import os, signal, sys
from pathlib import Path
import model_delivery.deploy.local.target as local
from model_delivery.store import ArtifactStore
from model_delivery.deploy import Candidate
from model_delivery.ledger import Ledger
from model_delivery.deploy.local.spec import LocalTargetSpec

model, port, state_dir, store, step, kill, version, digest = sys.argv[1:9]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def before(obj, name, when=lambda *a, **k: True):
    original = getattr(obj, name)
    def hooked(*args, **kwargs):
        if when(*args, **kwargs):
            die()
        return original(*args, **kwargs)
    setattr(obj, name, hooked)

def after(obj, name, when=lambda *a, **k: True):
    original = getattr(obj, name)
    def hooked(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return result
    setattr(obj, name, hooked)

moved = lambda path, host, port, **extra: host is not None
if kill == "before-spawn":
    before(local, "_spawn")
elif kill == "after-spawn":
    after(local, "_spawn")
elif kill == "waiting-ready":
    before(local.LocalTarget, "_wait_ready")
elif kill == "before-done":
    before(Ledger, "done")
elif kill == "before-front":
    before(local, "write_state", moved)
elif kill == "after-front":
    after(local, "write_state")
elif kill == "mid-stop":
    before(local.LocalTarget, "_stop_slot")
target = local.LocalTarget(model, LocalTargetSpec(port=int(port), ready_timeout_seconds=60), Path(state_dir),
                           ArtifactStore(store))
if step == "stage":
    target.stage(Candidate(model, version, digest), "run-2")
else:
    getattr(target, step)("run-2")
"""


POINTS = [
    Point("stage", "before-spawn", "rollback"),
    Point("stage", "after-spawn", "rollback"),
    Point("stage", "waiting-ready", "retry"),
    Point("stage", "before-done", "rollback"),
    Point("shift", "before-front", "retry"),
    Point("shift", "after-front", "rollback"),
    Point("shift", "before-done", "retry"),
    Point("shift", "after-front", "retry"),
    Point("retire", "mid-stop", "retry"),
    Point("rollback", "after-front", "retry"),
]


def _target(state_dir: Path, port: int, builds: Builds) -> LocalTarget:
    return LocalTarget(MODEL, LocalTargetSpec(port=port, ready_timeout_seconds=60), state_dir, builds.store)


def _orphans(state_dir: Path, state: dict) -> list[int]:
    """Processes of this target the ledger does not name (front, active, standby, candidates)."""
    named = {slot.get("pid") for slot in [state.get("front"), state.get("active"), state.get("standby"),
                                          *(state.get("candidates") or {}).values()] if slot}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if str(state_dir) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE and "-c" not in cmdline.split():
            found.append(proc.info["pid"])
    return sorted(set(found) - named)


def _run_point(point: Point, base: Path, builds: Builds) -> dict:
    """One kill and what follows; returns the row of the table."""
    state_dir, port = base / "deploy" / MODEL, free_port()
    v1, v2 = Candidate(MODEL, "1", builds.v1.digest), Candidate(MODEL, "2", builds.v2.digest)
    target = _target(state_dir, port, builds)
    started = time.perf_counter()
    target.stage(v1, "run-1")
    target.shift("run-1")
    deploy_s = time.perf_counter() - started  # a cold deploy, for scale (bench/bench_ledger.py)
    if point.step in ("shift", "retire", "rollback"):
        target.stage(v2, "run-2")
    if point.step in ("retire", "rollback"):
        target.shift("run-2")
    killed = subprocess.run([sys.executable, "-c", STEP, MODEL, str(port), str(state_dir), builds.store_root,
                             point.step, point.kill, v2.version, v2.digest], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, (point, killed.stderr[-3000:])
    killed_at = time.perf_counter()
    after = _target(state_dir, port, builds)  # a new process: what the retry or the rollback task has
    if point.rolls_back:
        after.rollback("run-2")
        production = v1
    else:
        if point.step == "stage":
            after.stage(v2, "run-2")
        if point.step in ("stage", "shift"):
            after.shift("run-2")
        after.retire("run-2")
        production = v2
    recovered_in = time.perf_counter() - killed_at
    ledger = Ledger(f"sqlite:///{state_dir / 'ledger.db'}")
    state = ledger.state(MODEL, "local")
    served = infer(port)
    row = {"point": f"{point.step}:{point.kill}", "then": point.then, "front": served[1],
           "ledger": state["active"]["digest"],
           "production": production.digest, "orphans": _orphans(state_dir, state),
           "pending": [e["action"] for e in ledger.pending(MODEL, "local")], "recovered_s": recovered_in,
           "deploy_s": deploy_s}
    # the next release goes through
    nxt = v1 if production is v2 else v2
    after.stage(nxt, "run-3")
    after.shift("run-3")
    row["next_release"] = infer(port)[1] == nxt.digest
    row["consistent"] = (served[0] == 200 and row["front"] == row["ledger"] == row["production"]
                         and not row["orphans"] and not row["pending"] and row["next_release"])
    return row


def table(rows: list[dict]) -> str:
    lines = [f"{'point':<24} {'then':<9} {'consistent':<11} {'orphans':<8} {'recovery s':>10} {'cold deploy s':>13}"]
    for r in rows:
        lines.append(f"{r['point']:<24} {r['then']:<9} {r['consistent']!s:<11} {len(r['orphans']):<8} "
                     f"{r['recovered_s']:>10.2f} {r['deploy_s']:>13.2f}")
    lines.append(f"{len(rows)} points, {sum(not r['consistent'] for r in rows)} inconsistent")
    return "\n".join(lines)


def test_every_kill_point_leaves_production_consistent(builds: Builds, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for n, point in enumerate(POINTS):
        base = tmp_path / f"p{n}"
        try:
            rows.append(_run_point(point, base, builds))
        finally:
            kill_matching(str(base / "deploy" / MODEL))
    with capsys.disabled():
        print("\n" + table(rows))
    bad = [r for r in rows if not r["consistent"]]
    assert not bad, table(rows) + "\n" + "\n".join(map(str, bad))


def test_a_rollback_that_fails_on_its_last_try_quarantines_the_model(builds: Builds, tmp_path: Path) -> None:
    """The rollback cannot put the front back (its state file is gone, a directory in its place): on an
    early try it fails and may be retried; on its last try the model is quarantined, the lease kept,
    and nothing deploys it until a person unlocks it."""
    from model_delivery.ledger import Quarantined
    from model_delivery.release import ReleaseContext, rollback

    state_dir, port = tmp_path / "deploy" / MODEL, free_port()
    v1, v2 = Candidate(MODEL, "1", builds.v1.digest), Candidate(MODEL, "2", builds.v2.digest)
    target = _target(state_dir, port, builds)
    try:
        for run_id, version in (("run-1", v1), ("run-2", v2)):
            target.stage(version, run_id)
            target.shift(run_id)
        ledger = target.ledger
        ledger.acquire(MODEL, "run-2", "release__breast_cancer", alive=lambda lease: True)
        front_file = target.front_state
        front_file.unlink()
        front_file.mkdir()  # a real failure: the front's state can no longer be written
        rc = ReleaseContext(model=MODEL, run_id="run-2", dag_id="release__breast_cancer", last_try=False)
        rc.__dict__.update(target=target, ledger=ledger)

        with pytest.raises(OSError):
            rollback(rc)
        assert ledger.holder(MODEL)["quarantine"] is None  # a retry may still succeed

        rc.last_try = True
        with pytest.raises(Quarantined) as quarantined:
            rollback(rc)
        assert f"model-delivery unlock {MODEL} --reason" in str(quarantined.value)
        assert ledger.holder(MODEL)["quarantine"]["run_id"] == "run-2"
        assert ledger.release(MODEL, "run-2") is False  # record cannot give it back either
        with pytest.raises(Quarantined):
            ledger.acquire(MODEL, "run-3", "model_rollback", alive=lambda lease: False)

        front_file.rmdir()  # a person repairs it, then unlocks
        ledger.unlock(MODEL, by="test", reason="front state file restored")
        assert ledger.acquire(MODEL, "run-3", "model_rollback", alive=lambda lease: False)["run_id"] == "run-3"
    finally:
        kill_matching(str(state_dir))
