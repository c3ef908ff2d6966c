"""Fault injection on the Ansible target: ``kill -9`` of the step's process at each step boundary and
inside the playbooks (the rolling update, the rollback, staging, retiring), then what Airflow would do
next (a retry of the step, or the rollback task).

The points run one after another on one fleet (two SSH hosts in network namespaces behind a real
HAProxy), each from where the last left production. After each the invariant must hold: what
answers through HAProxy, what every host serves, the ledger's active version and hosts, and what
the release decided (production) agree; every host is UP; the killed ``ansible-playbook`` and any
staging instance are gone, and so are the killed step's private files; no journal entry is left
half done. The next point's release (and a last one after the last point) must succeed. Each kill
runs one step in a subprocess, the cheapest place to kill; the whole-DAG kill is in
test_ansible_release.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from model_delivery.deploy import Candidate
from model_delivery.settings import Settings
from tests.helpers.ansible_fleet import HAProxy, Host, SshFleet, golden_request, served_digests, stop_fleet
from tests.helpers.faults import Point
from tests.helpers.models import build_and_store, copy_models, edit_spec
from tests.helpers.release import environ

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"
SSH_CONN_ID = "md_faults_ssh"
PROJECT = Path(__file__).resolve().parents[2]

# The step runs in its own process; KILL names where it SIGKILLs itself. Its ansible-playbook (a session of
# its own) runs on as an orphan when the kill is inside a playbook, as it would when a worker dies.
STEP = """
import os, signal, sys
from pathlib import Path
from model_delivery.deploy import Candidate
from model_delivery.deploy.ansible.target import AnsibleTarget
from model_delivery.ledger import Ledger
from model_delivery.settings import Settings
from model_delivery.spec import load_spec

home, models, store, step, kill, version, digest, run_id = sys.argv[1:9]
PLAYS = {"stage": ("PLAY [Start the candidate on the staging host", ""),  # every host prepared, host1 staging next
         "shift": ("PLAY [Roll the candidate out", "host2"),  # host1 switched, host2's turn begins
         "rollback": ("PLAY [Put the previous version back", "host2"),  # host1 restored, host2's turn begins
         "retire": ("PLAY [Retire", "Prune old artifacts")}  # the staging instance stopped, pruning next
seen = {"play": False}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def log(fmt, *args):
    line = fmt % args if args else fmt
    print(line, flush=True)
    if kill == "mid-playbook":
        play, then = PLAYS[step]
        seen["play"] = seen["play"] or play in line
        if seen["play"] and then in line:
            die()

def before(obj, name):
    original = getattr(obj, name)
    def hooked(*args, **kwargs):
        die()
    setattr(obj, name, hooked)

if kill == "before-playbook":
    before(AnsibleTarget, "_stream")  # journaled, private files written, ansible-playbook not started
elif kill == "before-done":
    before(Ledger, "done")  # the playbook ended, nothing after it recorded
elif kill == "before-verify":
    before(AnsibleTarget, "_verify_front")  # every host switched, the run's state not saved
settings = Settings(home=Path(home), models_dir=Path(models), artifact_root=store, artifact_conn_id=None,
                    tracking_uri="sqlite:////nonexistent")
target = AnsibleTarget(load_spec(Path(models) / "breast_cancer"), settings, settings.open_store(), log=log)
if step == "stage":
    target.stage(Candidate("breast_cancer", version, digest), run_id)
else:
    getattr(target, step)(run_id)
"""


# Each kill place is here at least once, and each step with each way out that matters for it. Dropped to
# keep the suite in its time budget (each point costs about 40 s alone, 90 s in the parallel suite):
# stage:before-done and shift:before-playbook, whose recovery is the ledger's, the same on every target
# (test_local_faults.py has them), and whose kill place another step has here; retire:mid-playbook, whose
# kill place four other steps have here (test_local_faults.py kills a retire midway).
POINTS = [
    Point("stage", "before-playbook", "rollback"),
    Point("stage", "mid-playbook", "retry"),
    Point("shift", "mid-playbook", "rollback"),
    Point("shift", "mid-playbook", "retry"),
    Point("shift", "before-verify", "rollback"),
    Point("shift", "before-done", "retry"),
    Point("rollback", "mid-playbook", "retry"),
]


@dataclass
class FaultFleet:
    base: Path
    settings: Settings
    ssh: SshFleet
    lb: HAProxy
    versions: tuple[Candidate, Candidate]

    @property
    def hosts(self) -> list[Host]:
        return self.ssh.hosts

    @property
    def model_dir(self) -> Path:
        return self.settings.models_dir / MODEL

    def target(self) -> Any:
        from model_delivery.deploy.ansible.target import AnsibleTarget
        from model_delivery.spec import load_spec

        return AnsibleTarget(load_spec(self.model_dir), self.settings, self.settings.open_store(),
                             log=lambda fmt, *args: None)

    def front_digest(self) -> str | None:
        import httpx

        try:
            response = httpx.post(f"{self.lb.front_url}/v2/models/{MODEL}/infer",
                                  json=golden_request(self.model_dir), timeout=10)
        except httpx.HTTPError:
            return None
        return response.headers.get("x-model-digest") if response.status_code == 200 else None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path, haproxy_installed: None, wheels: Path):
    base = tmp_path_factory.mktemp("ansible_faults")
    models = copy_models(base / "models", (MODEL,))
    settings = Settings(home=base / "home", models_dir=models, artifact_root=f"file://{base}/store",
                        artifact_conn_id=None, tracking_uri=f"sqlite:///{base / 'mlflow.db'}")
    store = settings.open_store()
    a, b = build_and_store(base / "a", store, None), build_and_store(base / "b", store, {"C": 0.5})
    ssh = SshFleet(base, 2, tag="f", subnet=233)
    try:
        hosts = ssh.start()
        lb = HAProxy(base, hosts, MODEL).start()
        try:
            (models / MODEL / "inventory.yml").write_text(
                yaml.safe_dump(ssh.inventory(wheels, base / "hosts" / "venv"), sort_keys=False))
            edit_spec(models / MODEL, lambda spec: spec["deploy"].update(target="ansible", ansible={
                "inventory": "inventory.yml", "ssh_conn_id": SSH_CONN_ID, "serial": 1, "max_fail_percentage": 0,
                "load_balancer": {"runtime_api": str(lb.socket), "front_url": lb.front_url},
                "ready_timeout_seconds": 60, "drain_timeout_seconds": 2}))
            with environ({f"AIRFLOW_CONN_{SSH_CONN_ID.upper()}": json.dumps(ssh.connection())}):
                yield FaultFleet(base, settings, ssh, lb, (Candidate(MODEL, "1", a.digest),
                                                           Candidate(MODEL, "2", b.digest)))
        finally:
            lb.stop()
    finally:
        stop_fleet(base)
        ssh.stop()


def _release(target: Any, candidate: Candidate, run_id: str) -> None:
    target.stage(candidate, run_id)
    target.shift(run_id)
    target.retire(run_id)


def _supervisors(host: Host) -> list[str]:
    """The instances (live, staging) whose supervisor runs on ``host``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        args = proc.info.get("cmdline") or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and "md_supervise.py" in " ".join(args) and "run" in args \
                and str(host.root) in args:
            found.append(args[args.index("--instance") + 1])
    return sorted(found)


def _playbooks(fleet: FaultFleet) -> list[int]:
    """ansible-playbook processes of this fleet's model still running."""
    marker = str(fleet.settings.deploy_dir / MODEL)
    return [p.pid for p in psutil.process_iter(["cmdline", "status"]) if p.info["status"] != psutil.STATUS_ZOMBIE
            and "ansible-playbook" in " ".join(p.info.get("cmdline") or []) and marker in " ".join(p.info["cmdline"])]


def _run_point(n: int, point: Point, fleet: FaultFleet, production: Candidate) -> tuple[dict, Candidate]:
    """One kill, from ``production`` serving everywhere, and what follows; the row of the table, and production."""
    target = fleet.target()
    candidate = next(v for v in fleet.versions if v.digest != production.digest)
    run_id = f"fault-{n}"
    if point.step in ("shift", "retire", "rollback"):
        target.stage(candidate, run_id)
    if point.step in ("retire", "rollback"):
        target.shift(run_id)
    ledger = fleet.settings.open_ledger()
    known = {e["id"] for e in ledger.journal(MODEL, target="ansible")}
    killed = subprocess.run([sys.executable, "-c", STEP, str(fleet.settings.home), str(fleet.settings.models_dir),
                             fleet.settings.artifact_root, point.step, point.kill, candidate.version,
                             candidate.digest, run_id], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": f"{PROJECT / 'plugins'}:{PROJECT / 'include' / 'serving'}"})
    assert killed.returncode == -9, (point, killed.stdout[-3000:], killed.stderr[-3000:])
    killed_at = time.perf_counter()
    left = [e for e in ledger.journal(MODEL, target="ansible") if e["id"] not in known]
    after = fleet.target()  # a new process: what the retry or the rollback task has
    if point.rolls_back:
        after.rollback(run_id)
        now = production
    else:
        if point.step == "stage":
            after.stage(candidate, run_id)
        if point.step in ("stage", "shift"):
            after.shift(run_id)
        after.retire(run_id)
        now = candidate
    recovered_s = time.perf_counter() - killed_at
    state = ledger.state(MODEL, "ansible")
    front = fleet.front_digest()
    served = served_digests(fleet.hosts)
    private = [d for e in left for d in e["detail"].get("private_dirs") or [] if Path(d).exists()]
    row = {"point": f"{point.step}:{point.kill}", "then": point.then, "front": front,
           "ledger": (state.get("active") or {}).get("digest"),
           "ledger_hosts": sorted({h.get("digest") for h in state["hosts"].values()}, key=str),
           "hosts": sorted(set(served.values()), key=str), "production": now.digest,
           "lb": fleet.lb.statuses(), "supervisors": {h.name: _supervisors(h) for h in fleet.hosts},
           "playbooks": _playbooks(fleet), "private": private,
           "pending": [e["detail"].get("playbook") for e in ledger.pending(MODEL, "ansible")],
           "recovered_s": recovered_s}
    row["consistent"] = (front == row["ledger"] == now.digest and row["ledger_hosts"] == row["hosts"] == [now.digest]
                         and set(row["lb"].values()) == {"UP"} and not row["playbooks"] and not row["private"]
                         and not row["pending"]
                         and all(found == ["live"] for found in row["supervisors"].values()))
    return row, now


def table(rows: list[dict]) -> str:
    lines = [f"{'point':<26} {'then':<9} {'consistent':<11} {'next release':<13} {'recovery s':>10}"]
    for r in rows:
        lines.append(f"{r['point']:<26} {r['then']:<9} {r['consistent']!s:<11} {r.get('next_release')!s:<13} "
                     f"{r['recovered_s']:>10.2f}")
    lines.append(f"{len(rows)} points, {sum(not (r['consistent'] and r.get('next_release')) for r in rows)} "
                 "inconsistent")
    return "\n".join(lines)


def test_every_kill_point_leaves_production_consistent(fleet: FaultFleet, capsys: pytest.CaptureFixture[str]) -> None:
    """Seven kill points, chained: each starts from the production the one before left."""
    production = fleet.versions[0]
    started = time.perf_counter()
    _release(fleet.target(), production, "fault-0")
    cold_s = time.perf_counter() - started
    rows: list[dict] = []
    try:
        for n, point in enumerate(POINTS, start=1):
            try:
                row, production = _run_point(n, point, fleet, production)
            except Exception as exc:  # this point's release, or what followed the kill, failed
                if rows:
                    rows[-1]["next_release"] = False
                raise AssertionError(f"{point}: {type(exc).__name__}: {exc}\n{table(rows)}") from exc
            if rows:
                rows[-1]["next_release"] = True  # this point's own stage (and shift) went through
            rows.append(row)
        last = next(v for v in fleet.versions if v.digest != production.digest)
        _release(fleet.target(), last, "fault-last")
        rows[-1]["next_release"] = fleet.front_digest() == last.digest
    finally:
        with capsys.disabled():
            print(f"\nAnsible kill points (a cold release of 2 hosts: {cold_s:.2f} s)\n" + table(rows))
    bad = [r for r in rows if not (r["consistent"] and r.get("next_release"))]
    assert not bad, table(rows) + "\n" + "\n".join(map(str, bad))
