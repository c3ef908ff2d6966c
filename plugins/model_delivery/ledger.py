"""The deployment ledger: what serves each model, who may change it, and every change, in one database.

Every worker, every deploy target, the rollback DAG and registry promotion use the same
ledger, so a stage run on one worker and a shift run on another see the same deployment.
It holds, per model:

- the **lease**: the one run that may change what serves the model, with a heartbeat and a
  TTL, or the model's **quarantine** (after a failed rollback), which only
  ``model-delivery unlock`` ends;
- the **serving state** of each target (one JSON document per model and target);
- the **journal**: every change of serving state, written as an ``intent`` (with what
  undoes it) before it is made and marked ``done`` after. An entry a crash left as an
  intent is finished or undone by the next task that touches the model (the target's
  ``recover``), before it does anything else.

Where it lives: ``MODEL_DELIVERY_LEDGER_URL`` (a SQLAlchemy URL), else the Airflow
connection named by ``MODEL_DELIVERY_LEDGER_CONN_ID`` (PostgreSQL in the team stack; its
password stays in the connection), else SQLite at ``<MODEL_DELIVERY_HOME>/ledger.db``.

Changes to one model are serialized by a per-model lock that reaches exactly as far as the
database: a PostgreSQL advisory lock (the server frees it when its holder's connection
dies, so ``kill -9`` never leaves it taken), or ``flock`` on a file beside the SQLite
database (one machine's file, one machine's lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import ModelDeliveryError, ReleaseFailed
from model_delivery.records import now

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy import Engine, Table

DEFAULT_TTL_SECONDS = 300
"""A lease whose heartbeat is older than this, and whose holder is not known to run, can be taken over."""

INTENT, DONE, UNDONE = "intent", "done", "undone"


class DeployBusy(ModelDeliveryError):
    """Another run holds the deploy lease of this model; retrying later will succeed."""


class LeaseWaitExpired(ReleaseFailed):
    """A run waited ``deploy.lease_wait_seconds`` for the deploy lease; not retried (a retry would wait again)."""


class Quarantined(ReleaseFailed):
    """The model is locked after a failed rollback or a mixed fleet; a person must check and unlock it."""


class StaleDecision(ReleaseFailed):
    """What a run decided before it held the lease (its champion, its rollback's "from") no longer holds."""


class LeaseLost(ReleaseFailed):
    """The run no longer holds the deploy lease (it was taken over): it must not change what serves."""


def ledger_url(home: Path) -> str:
    """The ledger's SQLAlchemy URL from the environment (see the module doc)."""
    url = os.environ.get("MODEL_DELIVERY_LEDGER_URL")
    if url:
        return url
    conn_id = os.environ.get("MODEL_DELIVERY_LEDGER_CONN_ID")
    if conn_id:
        from airflow.sdk import Connection

        conn = Connection.get(conn_id)
        uri = conn.get_uri()
        return uri.replace("postgres://", "postgresql+psycopg2://", 1).replace("postgresql://", "postgresql+psycopg2://", 1)
    return f"sqlite:///{home / 'ledger.db'}"


def _tables() -> tuple[Any, Table, Table, Table]:
    from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

    meta = MetaData()
    lease = Table(
        "md_lease", meta,
        Column("model", String(200), primary_key=True),
        Column("run_id", String(250)), Column("dag_id", String(250)), Column("since", String(40)),
        Column("heartbeat", Float), Column("ttl", Integer), Column("took_over", String(250)),
        Column("quarantine", Text),
    )
    state = Table(
        "md_state", meta,
        Column("model", String(200), primary_key=True), Column("target", String(40), primary_key=True),
        Column("doc", Text, nullable=False), Column("updated_at", Float, nullable=False),
    )
    journal = Table(
        "md_journal", meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("model", String(200), nullable=False, index=True), Column("target", String(40), nullable=False),
        Column("run_id", String(250)), Column("action", String(40), nullable=False),
        Column("detail", Text, nullable=False), Column("compensation", Text, nullable=False),
        Column("status", String(10), nullable=False), Column("at", String(40), nullable=False),
        Column("ended_at", String(40)), Column("note", Text),
    )
    return meta, lease, state, journal


_ENGINES: dict[str, Engine] = {}
_CREATED: set[str] = set()
_ENGINES_LOCK = threading.Lock()


def _engine(url: str) -> Engine:
    from sqlalchemy import create_engine, event

    with _ENGINES_LOCK:
        if url not in _ENGINES:
            if url.startswith("sqlite"):
                Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 60})

                @event.listens_for(engine, "connect")
                def _wal(dbapi_conn: Any, _record: Any) -> None:
                    # The busy timeout first: switching a new file to WAL takes a lock another
                    # process may hold. pysqlite's own BEGIN is turned off for the one below.
                    dbapi_conn.isolation_level = None
                    cursor = dbapi_conn.cursor()
                    cursor.execute("PRAGMA busy_timeout=60000")
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.close()

                @event.listens_for(engine, "begin")
                def _immediate(conn: Any) -> None:
                    # Take the write lock at BEGIN: a read-then-write transaction (amend) would
                    # otherwise fail with SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                engine = create_engine(url, pool_pre_ping=True)
            _ENGINES[url] = engine
        return _ENGINES[url]


class Ledger:
    """The deployment ledger at ``url`` (tables are created on first use).

    :param url: a SQLAlchemy URL: ``sqlite:///...`` or ``postgresql+psycopg2://...``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self.meta, self.lease_t, self.state_t, self.journal_t = _tables()
        if url not in _CREATED:
            # Under the ledger's own lock: workers opening a new ledger at once each ran
            # CREATE TABLE, and all but one failed with "table md_lease already exists".
            with self.exclusive("_ledger", "schema"):
                self.meta.create_all(self.engine)
            _CREATED.add(url)

    @cached_property
    def _sqlite_lock_dir(self) -> Path:
        return Path(self.url.split("///", 1)[1] + ".locks")

    # -- exclusion -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self, model: str, scope: str = "deploy") -> Iterator[None]:
        """Hold the model's lock for ``scope`` for the block, against every worker that shares the ledger."""
        name = f"{model}/{scope}"
        if self.engine.dialect.name == "sqlite":
            self._sqlite_lock_dir.mkdir(parents=True, exist_ok=True)
            path = self._sqlite_lock_dir / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".lock")
            with open(path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
            return
        if self.engine.dialect.name != "postgresql":
            raise ModelDeliveryError(f"the ledger supports SQLite and PostgreSQL, not {self.engine.dialect.name}. "
                                     "Fix: point MODEL_DELIVERY_LEDGER_URL at one of them.")
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()

    # -- serving state ---------------------------------------------------------------------------

    def state(self, model: str, target: str) -> dict[str, Any]:
        """The target's serving state of ``model`` ({} before its first deploy)."""
        from sqlalchemy import select

        t = self.state_t
        with self.engine.connect() as conn:
            doc = conn.execute(select(t.c.doc).where(t.c.model == model, t.c.target == target)).scalar()
        return json.loads(doc) if doc else {}

    def save_state(self, model: str, target: str, doc: dict[str, Any]) -> None:
        """Replace the target's serving state of ``model`` (one transaction: readers see old or new)."""
        from sqlalchemy import delete, insert

        t = self.state_t
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.model == model, t.c.target == target))
            conn.execute(insert(t).values(model=model, target=target, doc=json.dumps(doc, sort_keys=True),
                                          updated_at=time.time()))

    @contextlib.contextmanager
    def locked_state(self, model: str, target: str) -> Iterator[dict[str, Any]]:
        """Under the model's lock: read the target's state, yield it, save it on the way out (also on failure).

        A step that changes what serves also saves as it goes (``save_state``), and journals each
        change first: a ``kill -9`` skips this ``finally``.
        """
        with self.exclusive(model):
            doc = self.state(model, target)
            try:
                yield doc
            finally:
                self.save_state(model, target, doc)

    # -- journal ---------------------------------------------------------------------------------

    def intend(self, model: str, target: str, run_id: str | None, action: str, detail: dict[str, Any],
               compensation: dict[str, Any] | None = None) -> int:
        """Journal a change before it is made; returns the entry's id, for :meth:`done` or :meth:`undone`."""
        from sqlalchemy import insert

        with self.engine.begin() as conn:
            row = conn.execute(insert(self.journal_t).values(
                model=model, target=target, run_id=run_id, action=action, detail=json.dumps(detail, sort_keys=True),
                compensation=json.dumps(compensation or {}, sort_keys=True), status=INTENT, at=now()))
            key = row.inserted_primary_key
            assert key is not None
            return int(key[0])

    def amend(self, entry_id: int, detail: dict[str, Any]) -> None:
        """Add to an entry's detail (a process's pid, once it has started)."""
        from sqlalchemy import select, update

        t = self.journal_t
        with self.engine.begin() as conn:
            current = json.loads(conn.execute(select(t.c.detail).where(t.c.id == entry_id)).scalar_one())
            conn.execute(update(t).where(t.c.id == entry_id)
                         .values(detail=json.dumps({**current, **detail}, sort_keys=True)))

    def _end(self, entry_id: int, status: str, note: str) -> None:
        from sqlalchemy import update

        with self.engine.begin() as conn:
            conn.execute(update(self.journal_t).where(self.journal_t.c.id == entry_id)
                         .values(status=status, ended_at=now(), note=note or None))

    def done(self, entry_id: int, note: str = "") -> None:
        """The change was made."""
        self._end(entry_id, DONE, note)

    def undone(self, entry_id: int, note: str = "") -> None:
        """The change was not made, or was reversed by its compensation."""
        self._end(entry_id, UNDONE, note)

    @contextlib.contextmanager
    def change(self, model: str, target: str, run_id: str | None, action: str, detail: dict[str, Any],
               compensation: dict[str, Any] | None = None) -> Iterator[int]:
        """Journal the change the block makes: intended before it, done after it, undone if it raises."""
        entry = self.intend(model, target, run_id, action, detail, compensation)
        try:
            yield entry
        except BaseException as exc:
            self.undone(entry, f"{type(exc).__name__}: {exc}"[:500])
            raise
        self.done(entry)

    def journal(self, model: str, *, target: str | None = None, run_id: str | None = None,
                status: str | None = None) -> list[dict[str, Any]]:
        """Journal entries of ``model``, oldest first, optionally of one target, run or status."""
        from sqlalchemy import select

        t = self.journal_t
        query = select(t).where(t.c.model == model).order_by(t.c.id)
        for column, value in ((t.c.target, target), (t.c.run_id, run_id), (t.c.status, status)):
            if value is not None:
                query = query.where(column == value)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**row, "detail": json.loads(row["detail"]), "compensation": json.loads(row["compensation"])}
                for row in rows]

    def pending(self, model: str, target: str) -> list[dict[str, Any]]:
        """The changes a crash left half made, oldest first."""
        return self.journal(model, target=target, status=INTENT)

    # -- the lease ------------------------------------------------------------------------------

    def holder(self, model: str) -> dict[str, Any] | None:
        """The model's lease row (holder run, heartbeat, quarantine), or None when it is free."""
        from sqlalchemy import select

        with self.engine.connect() as conn:
            row = conn.execute(select(self.lease_t).where(self.lease_t.c.model == model)).mappings().first()
        if row is None:
            return None
        lease = dict(row)
        lease["quarantine"] = json.loads(lease["quarantine"]) if lease["quarantine"] else None
        return lease

    def _put_lease(self, model: str, lease: dict[str, Any] | None) -> None:
        from sqlalchemy import delete, insert

        with self.engine.begin() as conn:
            conn.execute(delete(self.lease_t).where(self.lease_t.c.model == model))
            if lease is not None:
                values = {**lease, "model": model}
                values["quarantine"] = json.dumps(values["quarantine"]) if values.get("quarantine") else None
                conn.execute(insert(self.lease_t).values(**values))

    def acquire(self, model: str, run_id: str, dag_id: str, *, alive: Callable[[dict[str, Any]], bool],
                ttl: int = DEFAULT_TTL_SECONDS) -> dict[str, Any]:
        """Take the lease for ``run_id`` (idempotent: its holder renews it).

        A lease held by another run is taken over when ``alive(lease)`` says its holder no longer
        runs; the takeover is journaled (the target's ``recover`` then finishes or undoes what the
        holder left half done, before this run changes anything).

        :raises Quarantined: the model is quarantined; the error says how to unlock it.
        :raises DeployBusy: a live run holds it.
        """
        with self.exclusive(model, "lease"):
            held = self.holder(model)
            if held and held.get("quarantine"):
                raise Quarantined(quarantine_message(model, held["quarantine"]))
            if held and held["run_id"] == run_id:
                held["heartbeat"] = time.time()
                self._put_lease(model, held)
                if held.get("took_over"):  # not settled yet (see settled): a retry settles it again
                    takeovers = [e for e in self.journal(model, target="lease", run_id=run_id)
                                 if e["action"] == "takeover"]
                    held["took_over_dag"] = takeovers[-1]["detail"]["from_dag"] if takeovers else None
                return held
            if held and alive(held):
                raise DeployBusy(
                    f"{held['dag_id']} run {held['run_id']} is deploying {model} since {held['since']}; "
                    "this run waits (the task retries) until that run ends."
                )
            lease = {"run_id": run_id, "dag_id": dag_id, "since": now(), "heartbeat": time.time(), "ttl": ttl,
                     "took_over": held["run_id"] if held else None, "quarantine": None}
            self._put_lease(model, lease)
            lease["took_over_dag"] = held["dag_id"] if held else None
            if held:
                entry = self.intend(model, "lease", run_id, "takeover",
                                    {"from_run": held["run_id"], "from_dag": held["dag_id"], "since": held["since"]})
                self.done(entry, f"{held['dag_id']} run {held['run_id']} no longer runs")
            return lease

    def settled(self, model: str, run_id: str) -> None:
        """The holder ``run_id`` has settled the run it took the lease over from: its retries need not again."""
        from sqlalchemy import update

        t = self.lease_t
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.model == model, t.c.run_id == run_id).values(took_over=None))

    def heartbeat(self, model: str, run_id: str) -> bool:
        """Renew the lease's heartbeat if ``run_id`` holds it; False if it does not (it was taken over)."""
        from sqlalchemy import update

        t = self.lease_t
        with self.engine.begin() as conn:
            hit = conn.execute(update(t).where(t.c.model == model, t.c.run_id == run_id).values(heartbeat=time.time()))
        return bool(hit.rowcount)

    @contextlib.contextmanager
    def heartbeating(self, model: str, run_id: str, every: float | None = None) -> Iterator[None]:
        """Renew the heartbeat in the background for the block (a long stage: a vLLM start, a rollout)."""
        holder = self.holder(model)
        interval = every or max(1.0, float((holder or {}).get("ttl") or DEFAULT_TTL_SECONDS) / 4)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                with contextlib.suppress(Exception):
                    self.heartbeat(model, run_id)

        thread = threading.Thread(target=beat, name=f"ledger-heartbeat-{model}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def release(self, model: str, run_id: str) -> bool:
        """Give the lease back if ``run_id`` holds it and the model is not quarantined; True if it did."""
        with self.exclusive(model, "lease"):
            held = self.holder(model)
            if held and held["run_id"] == run_id and not held.get("quarantine"):
                self._put_lease(model, None)
                return True
            return False

    def quarantine(self, model: str, run_id: str, dag_id: str, reason: str) -> dict[str, Any]:
        """Lock the model until a person unlocks it (a failed rollback, a fleet of mixed versions)."""
        with self.exclusive(model, "lease"):
            held = self.holder(model) or {"run_id": run_id, "dag_id": dag_id, "since": now(), "heartbeat": time.time(),
                                          "ttl": DEFAULT_TTL_SECONDS, "took_over": None}
            held["quarantine"] = {"reason": reason, "run_id": run_id, "dag_id": dag_id, "at": now()}
            self._put_lease(model, held)
            entry = self.intend(model, "lease", run_id, "quarantine", {"reason": reason})
            self.done(entry)
            return held

    def unlock(self, model: str, *, by: str, reason: str) -> dict[str, Any] | None:
        """End a quarantine (or free any lease) by a person's decision, journaled with who and why."""
        if not reason.strip():
            raise ModelDeliveryError("unlock needs a reason (--reason '...'): it is recorded in the ledger's journal.")
        with self.exclusive(model, "lease"):
            held = self.holder(model)
            self._put_lease(model, None)
            entry = self.intend(model, "lease", None, "unlock", {"by": by, "reason": reason, "lease": held})
            self.done(entry)
            return held


def quarantine_message(model: str, quarantine: dict[str, Any]) -> str:
    """The error a quarantined model gives: why, since when, and how to end it."""
    return (f"model {model} is quarantined since {quarantine.get('at')} by {quarantine.get('dag_id')} run "
            f"{quarantine.get('run_id')}: {quarantine.get('reason')}. Nothing deploys it until a person checks what "
            f"serves and runs: model-delivery unlock {model} --reason '...'")


def open_ledger(home: Path) -> Ledger:
    """The ledger the environment names (see the module doc)."""
    return Ledger(ledger_url(home))
