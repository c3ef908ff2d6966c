"""A promote killed (-9) after it moved the registry aliases, before it confirmed them in the journal.

Real MLflow (SQLite), the real ledger, the real stage functions; the promote runs in a subprocess
that SIGKILLs itself at that moment. Then what Airflow does next: the promote task's retry and, on
a failure after it, the run's rollback; or the run marked failed and the next run taking its lease
over. Either way the aliases end as the journal says they were, and the journal holds no intent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_delivery.registry import PREVIOUS, PRODUCTION, Registry
from model_delivery.release import ReleaseContext, promote, rollback, settle_dead_holder
from model_delivery.settings import Settings
from tests.helpers.models import copy_models

MODEL = "breast_cancer"
PROJECT = Path(__file__).resolve().parents[3]

KILLED_PROMOTE = """
import os, signal, sys
from pathlib import Path
from model_delivery.ledger import Ledger
from model_delivery.release import ReleaseContext, promote
from model_delivery.settings import Settings

home, models, store, tracking, version = sys.argv[1:6]
Ledger.done = lambda self, entry, note="": os.kill(os.getpid(), signal.SIGKILL)  # the aliases moved, unconfirmed
settings = Settings(home=Path(home), models_dir=Path(models), artifact_root=store, artifact_conn_id=None,
                    tracking_uri=tracking)
promote(ReleaseContext(model="breast_cancer", run_id="run-2", dag_id="release__breast_cancer", settings=settings,
                       log=lambda *a: None), {"version": version})
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = copy_models(tmp_path / "models", (MODEL,))
    return Settings(home=tmp_path / "home", models_dir=models, artifact_root=f"file://{tmp_path}/store",
                    artifact_conn_id=None, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def _context(settings: Settings, run_id: str) -> ReleaseContext:
    return ReleaseContext(model=MODEL, run_id=run_id, dag_id="release__breast_cancer", settings=settings,
                          log=lambda *args: None)


def _killed_promote(settings: Settings) -> tuple[Registry, dict[str, str | None]]:
    """v1 production, v2 the candidate of run-2 (holding the lease); its promote killed after the aliases moved."""
    registry = Registry(settings.tracking_uri)
    for n in (1, 2, 3):
        digest = f"sha256:{n:064x}"
        registry.register(MODEL, source=f"file:///store/{MODEL}/sha256/{digest[7:]}", digest=digest,
                          tags={"run_id": f"run-{n}"}, params={})
    registry.promote(MODEL, "1")
    registry.promote(MODEL, "3")
    registry.promote(MODEL, "1")  # production 1, previous 3: the rollback must restore both
    before = {PRODUCTION: "1", PREVIOUS: "3"}
    ledger = settings.open_ledger()
    ledger.acquire(MODEL, "run-2", "release__breast_cancer", alive=lambda lease: True)
    killed = subprocess.run([sys.executable, "-c", KILLED_PROMOTE, str(settings.home), str(settings.models_dir),
                             settings.artifact_root, settings.tracking_uri, "2"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": f"{PROJECT / 'plugins'}:"
                                                                          f"{PROJECT / 'include' / 'serving'}"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert registry.alias(MODEL, PRODUCTION).version == "2"  # moved, and the journal does not confirm it
    [intent] = ledger.pending(MODEL, "registry")
    assert intent["action"] == "aliases" and intent["compensation"] == before, intent
    return registry, before


def _aliases(registry: Registry) -> dict[str, str | None]:
    return {alias: getattr(registry.alias(MODEL, alias), "version", None) for alias in (PRODUCTION, PREVIOUS)}


def test_a_retried_promote_then_a_rollback_restores_the_aliases_from_before_the_kill(settings: Settings) -> None:
    registry, before = _killed_promote(settings)

    rc = _context(settings, "run-2")
    promote(rc, {"version": "2"})  # the retry: production is already 2, it journals that and confirms
    assert _aliases(registry)[PRODUCTION] == "2"
    rollback(rc)  # say verify fails after it: the rollback task runs

    assert _aliases(registry) == before  # not the retry's "before" (production 2): the first entry's
    ledger = settings.open_ledger()
    assert ledger.pending(MODEL, "registry") == []
    assert {e["status"] for e in ledger.journal(MODEL, target="registry")} == {"undone"}
    assert ledger.holder(MODEL) is None


def test_a_run_killed_in_promote_is_rolled_back_by_the_run_that_takes_its_lease(settings: Settings) -> None:
    registry, before = _killed_promote(settings)

    rc = _context(settings, "run-4")
    lease = rc.ledger.acquire(MODEL, "run-4", rc.dag_id, alive=lambda lease: False)  # run-2 was marked failed
    settled = settle_dead_holder(rc, lease["took_over"], lease["took_over_dag"])

    # Its aliases were never confirmed: it did not release, so it is rolled back, aliases included.
    assert settled["run_id"] == "run-2" and settled["finished"] == "rollback", settled
    assert settled["aliases"] == before and _aliases(registry) == before
    assert settings.open_ledger().pending(MODEL, "registry") == []
