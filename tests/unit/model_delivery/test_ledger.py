"""The deployment ledger on SQLite and on a real PostgreSQL: the lease (exclusion, takeover of a dead
holder, quarantine and unlock), serving state, the journal, and exclusion across processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from model_delivery.ledger import DeployBusy, Ledger, Quarantined
from model_delivery.settings import PROJECT_ROOT
from tests.helpers.services import postgres

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.unit.model_delivery.conftest import Builds


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with postgres(tmp_path_factory.mktemp("ledger-pg"), database="model_delivery") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    base: str = request.getfixturevalue("postgres_url")
    return base


@pytest.fixture
def model(request: pytest.FixtureRequest) -> str:
    return f"m-{request.node.name}"  # one model per test: the PostgreSQL ledger is shared by the module


def test_one_run_holds_the_lease_and_a_dead_holder_is_taken_over(url: str, model: str) -> None:
    ledger = Ledger(url)
    first = ledger.acquire(model, "run-a", "release__m", alive=lambda lease: True)
    assert first["run_id"] == "run-a" and first["took_over"] is None
    assert ledger.acquire(model, "run-a", "release__m", alive=lambda lease: True)["since"] == first["since"]

    with pytest.raises(DeployBusy, match="release__m run run-a is deploying"):
        ledger.acquire(model, "run-b", "model_rollback", alive=lambda lease: True)
    assert ledger.release(model, "run-b") is False
    assert ledger.heartbeat(model, "run-b") is False and ledger.heartbeat(model, "run-a") is True

    seen: list[str] = []
    taken = ledger.acquire(model, "run-b", "model_rollback", alive=lambda lease: seen.append(lease["run_id"]) or False)

    assert seen == ["run-a"] and taken["run_id"] == "run-b" and taken["took_over"] == "run-a"
    takeover = [e for e in ledger.journal(model, target="lease") if e["action"] == "takeover"]
    assert takeover[-1]["detail"]["from_run"] == "run-a" and takeover[-1]["status"] == "done"
    assert ledger.heartbeat(model, "run-a") is False  # the old holder learns it lost the lease
    # A retry of the taking task before it settled run-a settles it again; once settled, retries do not.
    again = ledger.acquire(model, "run-b", "model_rollback", alive=lambda lease: True)
    assert again["took_over"] == "run-a" and again["took_over_dag"] == "release__m"
    ledger.settled(model, "run-b")
    assert ledger.acquire(model, "run-b", "model_rollback", alive=lambda lease: True)["took_over"] is None
    assert ledger.release(model, "run-b") is True and ledger.holder(model) is None


def test_a_quarantined_model_stays_locked_until_a_person_unlocks_it(url: str, model: str) -> None:
    ledger = Ledger(url)
    ledger.acquire(model, "run-a", "release__m", alive=lambda lease: True)
    ledger.quarantine(model, "run-a", "release__m", "the rollback failed: host2 unreachable")

    assert ledger.release(model, "run-a") is False  # the holder cannot give it back either
    with pytest.raises(Quarantined) as refused:
        ledger.acquire(model, "run-b", "release__m", alive=lambda lease: False)  # not even a takeover
    message = str(refused.value)
    assert "host2 unreachable" in message and f"model-delivery unlock {model} --reason" in message

    with pytest.raises(Exception, match="needs a reason"):
        ledger.unlock(model, by="alice", reason=" ")
    ledger.unlock(model, by="alice", reason="host2 fixed by hand, v3 on every host")

    assert ledger.holder(model) is None
    unlock = [e for e in ledger.journal(model, target="lease") if e["action"] == "unlock"][-1]
    assert unlock["detail"]["by"] == "alice" and "host2 fixed" in unlock["detail"]["reason"]
    assert ledger.acquire(model, "run-b", "release__m", alive=lambda lease: True)["run_id"] == "run-b"


def test_state_and_journal(url: str, model: str) -> None:
    ledger = Ledger(url)
    assert ledger.state(model, "local") == {}
    with ledger.locked_state(model, "local") as state:
        state["active"] = {"version": "1"}
    assert ledger.state(model, "local") == {"active": {"version": "1"}}
    assert ledger.state(model, "ansible") == {}

    with pytest.raises(RuntimeError), ledger.locked_state(model, "local") as state:  # saved on failure too
        state["active"] = {"version": "2"}
        raise RuntimeError("half-way")
    assert ledger.state(model, "local")["active"] == {"version": "2"}

    started = ledger.intend(model, "local", "run-a", "start", {"port": 1234}, {"stop_port": 1234})
    ledger.amend(started, {"pid": 99})
    switched = ledger.intend(model, "local", "run-a", "switch", {"to": "2"})
    ledger.done(switched, "front moved")
    assert [(e["action"], e["detail"]) for e in ledger.pending(model, "local")] == [("start", {"port": 1234, "pid": 99})]
    ledger.undone(started, "stopped by the next step")
    assert ledger.pending(model, "local") == []
    assert [(e["action"], e["status"], e["note"]) for e in ledger.journal(model, run_id="run-a")] == [
        ("start", "undone", "stopped by the next step"), ("switch", "done", "front moved")]


CONTENDER = """
import sys, time
from model_delivery.ledger import Ledger
ledger = Ledger(sys.argv[1])
for _ in range(int(sys.argv[3])):
    with ledger.locked_state(sys.argv[2], "local") as state:  # read, wait, write: lost updates without the lock
        seen = state.get("count", 0)
        time.sleep(0.002)
        state["count"] = seen + 1
"""


def test_changes_from_several_processes_are_serialized(url: str, model: str) -> None:
    """Two worker processes change the same model's state at once: no update is lost."""
    env = {"PYTHONPATH": f"{PROJECT_ROOT / 'plugins'}:{PROJECT_ROOT / 'include' / 'serving'}:{PROJECT_ROOT}",
           "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, url, model, "40"], env=env) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert Ledger(url).state(model, "local")["count"] == 80


OPENER = """
import sys
from model_delivery.ledger import Ledger
ledger = Ledger(sys.argv[1])
ledger.save_state(sys.argv[2], "local", {"by": sys.argv[3]})
entry = ledger.intend(sys.argv[2], "local", sys.argv[3], "start", {})
ledger.amend(entry, {"pid": 1})
ledger.done(entry)
"""


def test_workers_opening_a_new_sqlite_ledger_at_once_all_get_it(tmp_path: Path) -> None:
    """Six processes open a ledger that does not exist yet, at once, five times over: each creates the
    tables only if no other did (it raised "table md_lease already exists" before), and writes."""
    env = {"PYTHONPATH": f"{PROJECT_ROOT / 'plugins'}:{PROJECT_ROOT / 'include' / 'serving'}", "PATH": "/usr/bin:/bin"}
    for attempt in range(5):
        url = f"sqlite:///{tmp_path / f'ledger-{attempt}.db'}"
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, url, "m", f"run-{n}"], env=env,
                                  stderr=subprocess.PIPE, text=True) for n in range(6)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, "\n".join(e for e in errors if e)[-3000:]
        assert len(Ledger(url).journal("m")) == 6


def test_a_killed_holder_does_not_keep_the_lock(url: str, model: str) -> None:
    """kill -9 of a process inside the model's lock: the next one gets it (flock, or PostgreSQL's
    advisory lock, is freed with the process or its connection)."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom model_delivery.ledger import Ledger\n"
        "with Ledger(sys.argv[1]).exclusive(sys.argv[2]):\n    print('held', flush=True)\n    time.sleep(600)\n"),
        url, model], stdout=subprocess.PIPE, text=True,
        env={"PYTHONPATH": f"{PROJECT_ROOT / 'plugins'}:{PROJECT_ROOT / 'include' / 'serving'}", "PATH": "/usr/bin:/bin"})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    got = threading.Event()

    def take() -> None:
        with Ledger(url).exclusive(model):
            got.set()

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    taker.join(timeout=300)  # a hang guard, not a speed claim: a lock kept by the dead holder never comes
    assert got.is_set(), "the lock of a killed holder was never freed"


def test_unlock_and_lease_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from model_delivery.cli import main

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("MODEL_DELIVERY_LEDGER_URL", url)
    ledger = Ledger(url)
    ledger.quarantine("m", "run-a", "release__m", "the rollback failed")

    assert main(["unlock", "m", "--reason", "checked v2 serves on every host"]) == 0
    assert "ended the quarantine (the rollback failed)" in capsys.readouterr().out
    assert ledger.holder("m") is None
    assert main(["unlock", "m", "--reason", "again"]) == 1  # nothing was locked
    assert main(["unlock", "m", "--reason", ""]) == 2
    capsys.readouterr()
    assert main(["lease", "m"]) == 0
    shown = capsys.readouterr().out
    assert '"lease": null' in shown and "checked v2 serves on every host" in shown


WORKER = """
import sys
from model_delivery.store import ArtifactStore
from model_delivery.deploy import Candidate
from model_delivery.deploy.local.target import LocalTarget
from model_delivery.settings import get_settings
from model_delivery.deploy.local.spec import LocalTargetSpec
model, port, store, step, version, digest = sys.argv[1:7]
settings = get_settings()
target = LocalTarget(model, LocalTargetSpec(port=int(port), ready_timeout_seconds=60), settings.deploy_dir / model,
                     ArtifactStore(store), ledger=settings.open_ledger())
args = [Candidate(model, version, digest), "run-1"] if step == "stage" else ["run-1"]
print(getattr(target, step)(*args)["version"])
"""


def test_stage_on_one_worker_and_shift_on_another(postgres_url: str, builds: Builds, tmp_path: Path) -> None:
    """Two workers with their own MODEL_DELIVERY_HOME share one PostgreSQL ledger and one store: the
    candidate one of them staged is found, and shifted to, by the other."""
    from model_delivery.deploy.local.spec import LocalTargetSpec
    from model_delivery.deploy.local.target import LocalTarget
    from tests.helpers.models import free_port
    from tests.helpers.processes import kill_matching
    from tests.unit.model_delivery.test_local_target import MODEL, infer

    port = free_port()
    env = {"PYTHONPATH": f"{PROJECT_ROOT / 'plugins'}:{PROJECT_ROOT / 'include' / 'serving'}", "PATH": "/usr/bin:/bin",
           "MODEL_DELIVERY_LEDGER_URL": postgres_url}
    try:
        for step, home in (("stage", "worker-a"), ("shift", "worker-b")):
            done = subprocess.run([sys.executable, "-c", WORKER, MODEL, str(port), builds.store_root, step, "1",
                                   builds.v1.digest], env={**env, "MODEL_DELIVERY_HOME": str(tmp_path / home)},
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
        assert infer(port) == (200, builds.v1.digest)
        state = Ledger(postgres_url).state(MODEL, "local")
        assert state["active"]["version"] == "1" and str(tmp_path / "worker-a") in state["active"]["log"]
        assert str(tmp_path / "worker-b") in state["front"]["state_file"]  # the front the shift started
        assert not (tmp_path / "worker-b" / "deploy" / MODEL / "state.json").exists()
        viewer = LocalTarget(MODEL, LocalTargetSpec(port=port), tmp_path / "viewer", builds.store,
                             ledger=Ledger(postgres_url))
        assert viewer.status()["active_alive"] is True
    finally:
        kill_matching(str(tmp_path))
