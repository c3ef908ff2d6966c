"""The ``local`` deploy target: blue-green on this machine.

Each version runs as its own server process on a fresh port, launched as the spec's serving
runtime declares (``model_delivery.runtimes``: our model server, or vLLM). A front proxy
(``python -m model_server.front``) holds the model's stable port from the spec and
forwards each new connection to the active version. ``shift`` points the front at the
candidate once it is ready; the version it replaces stays warm as ``standby`` until
``retire`` (called on promotion), so a rollback is a switch back.

State lives in the deployment ledger (``model_delivery.ledger``), changed only under the
model's lock, so a restarted Airflow, another worker, or a manual rollback running beside a
release, sees and respects what is serving. Every change of what serves (a server started,
the front switched, a server stopped) is journaled before it is made and confirmed after;
the next step that touches the model first finishes or undoes what a killed one left
(:meth:`LocalTarget.recover`): a server started but never recorded is stopped, a switch
that did not finish is put back, so the front serves what the ledger calls active.

With ``serving.grpc``, each server also gets a fresh gRPC port (``--grpc-port``), and the front listens on
``deploy.local.grpc_port`` too, forwarding each new TCP connection (HTTP/2) to the active server's gRPC port:
one rewrite of its state file switches both ports at once. A gRPC channel opened before a switch stays on
the old server until it closes (the front works at layer 4); channels opened after go to the new one.

Servers and the front start with an allow-listed environment (``runtimes.server_env``), never the
worker's whole one. With ``serving.token_conn_id``, each server gets the bearer token in its
runtime's variable, and the readiness checks send it; the front, a TCP proxy, needs none: the
client's ``Authorization`` header passes through it to the server, which checks it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import DeployFailed, TamperedArtifact
from model_delivery.procs import alive as _alive
from model_delivery.procs import stop as _stop
from model_delivery.records import now
from model_delivery.runtimes import server_env
from model_delivery.settings import PROJECT_ROOT
from model_server.front import GRPC_KEY, read_state, write_state
from model_server.manifest import parse_digest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from model_delivery.deploy import Candidate
    from model_delivery.deploy.local.spec import LocalTargetSpec
    from model_delivery.ledger import Ledger
    from model_delivery.settings import Settings
    from model_delivery.spec import ModelSpec, ServingSpec, SigningSpec
    from model_delivery.store import ArtifactStore

SERVING_PATH = PROJECT_ROOT / "include" / "serving"
EXIT_TAMPERED = 3
_logger = logging.getLogger(__name__)


def free_port(host: str) -> int:
    """A port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a detached process (own session) that outlives the task that started it, with exactly ``env``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )


_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|^\s*(\w+\.)*\w*(Error|Exception)(: |$)")


def _tail(path: Path, lines: int = 15) -> str:
    """The log's last ``lines`` lines, after its first error lines when those are earlier: a server's
    last words are often a wrapper's traceback (vLLM: "Engine core initialization failed. See root
    cause above"), and the cause is further up."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    first = [line for line in text[:-lines] if _ERROR_LINE.search(line)][:8]
    return "\n".join([*first, "[...]", *text[-lines:]] if first else text[-lines:])


class LocalTarget:
    """Blue-green deploys of one model on this machine.

    :param model: model name.
    :param config: the spec's ``deploy.local`` section.
    :param state_dir: directory for logs and fetched artifacts.
    :param store: the artifact store to fetch from.
    :param serving: the spec's serving section (default: our model server).
    :param ledger: the deployment ledger (default: SQLite in ``state_dir``, for a target used alone).
    :param signing: the spec's ``signing`` section: with ``required`` (or ``optional`` and a signature present),
        stage verifies the fetched artifact's signature before it starts anything.
    :param model_dir: the model folder, where ``signing.public_key`` is found.
    :param token_conn_id: the Airflow connection whose password is the servers' bearer token
        (``serving.token_conn_id``); None: servers without authentication.
    """

    name = "local"

    def __init__(self, model: str, config: LocalTargetSpec, state_dir: Path, store: ArtifactStore,
                 serving: ServingSpec | None = None, ledger: Ledger | None = None,
                 signing: SigningSpec | None = None, model_dir: Path | None = None,
                 token_conn_id: str | None = None) -> None:
        from model_delivery.ledger import Ledger
        from model_delivery.runtimes import get_runtime

        self.model = model
        self.config = config
        self.runtime = get_runtime(serving.runtime if serving else "model_server")
        self.runtime_args = dict(serving.args) if serving else {}
        self.grpc = bool(getattr(serving, "grpc", False)) and config.grpc_port is not None
        self.state_dir = state_dir
        self.store = store
        self.ledger = ledger or Ledger(f"sqlite:///{state_dir / 'ledger.db'}")
        self.front_state = state_dir / "front.json"
        self.recovered: list[str] = []  # what the last locked step settled first (:meth:`recover`)
        self.signing = signing
        self.model_dir = model_dir or state_dir
        self.token_conn_id = token_conn_id
        self._token_read = False
        self._token_value: str | None = None

    @property
    def token(self) -> str | None:
        """The servers' bearer token (read once from the connection; never logged, saved or returned)."""
        if not self._token_read:
            from model_delivery.serving_auth import serving_token

            self._token_value, self._token_read = serving_token(self.token_conn_id), True
        return self._token_value

    @classmethod
    def from_spec(cls, spec: ModelSpec, settings: Settings, store: ArtifactStore,
                  log: Callable[..., None] | None = None) -> LocalTarget:
        """The target of ``spec``'s ``deploy.local`` section, its state in ``settings.deploy_dir / model``."""
        assert spec.deploy.local is not None  # guaranteed by DeploySpec validation
        return cls(spec.name, spec.deploy.local, settings.deploy_dir / spec.name, store, spec.serving,
                   settings.open_ledger(), signing=spec.signing, model_dir=settings.models_dir / spec.name,
                   token_conn_id=getattr(spec.serving, "token_conn_id", None))

    @property
    def front_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def front_grpc(self) -> str | None:
        """``host:port`` of the front's gRPC port (None without ``serving.grpc``)."""
        return f"{self.config.host}:{self.config.grpc_port}" if self.grpc else None

    def _urls(self) -> dict[str, Any]:
        """The front's addresses, for results: ``url``, and ``grpc_url`` with ``serving.grpc``."""
        return {"url": self.front_url, **({"grpc_url": self.front_grpc} if self.grpc else {})}

    # -- state -------------------------------------------------------------------------------

    def _reconcile(self, state: dict[str, Any]) -> str | None:
        """The front serves the recorded active version: put it back there if it points elsewhere.

        After :meth:`recover` has settled the journal, the front may still point at a server the
        ledger does not call active (a switch killed after the front moved). Every step that
        touches the model puts it back first, and says so.
        """
        active = state["active"]
        if not self._front_alive(state):
            return None
        with contextlib.suppress(OSError, ValueError):
            upstream = read_state(self.front_state)
            if active is None or not self._slot_alive(active):
                if upstream is not None and active is None:
                    self._route(None)
                    return f"the front of {self.model} pointed at a server no deploy finished; it has no upstream again"
                return None
            grpc = read_state(self.front_state, GRPC_KEY)
            grpc_ok = not self.grpc or (grpc.port if grpc is not None else None) == active.get("grpc_port")
            if upstream is not None and (upstream.host, upstream.port) == (active["host"], active["port"]) \
                    and grpc_ok:
                return None
        self._route(active)
        note = (f"an interrupted switch had left the front of {self.model} on another server; it serves the "
                f"recorded active version {active['version']} ({active['digest']}) again")
        _logger.warning(note)
        return note

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the model's lock, settle what a killed step left, and yield the state; saved on exit, also on failure."""
        with self.ledger.locked_state(self.model, self.name) as state:
            self._adopt(_defaults(state))
            self.recovered = self.recover(state)
            yield state

    def _save(self, state: dict[str, Any]) -> None:
        self.ledger.save_state(self.model, self.name, state)

    def _read(self) -> dict[str, Any]:
        return self._adopt(_defaults(self.ledger.state(self.model, self.name)))

    def _adopt(self, state: dict[str, Any]) -> dict[str, Any]:
        """Use the running front's state file, wherever the worker that started it keeps its files."""
        recorded = (state["front"] or {}).get("state_file")
        if recorded:
            self.front_state = Path(recorded)
        return state

    def recover(self, state: dict[str, Any]) -> list[str]:
        """Finish or undo every change the journal holds as an intent (its step was killed); what was done.

        - ``start``: a server started by a killed ``stage`` is stopped (found by its port when its pid
          was never recorded), unless it had been recorded ready.
        - ``switch``: done if the ledger already calls its server active; otherwise undone, and the
          front is put back on the recorded active version (:meth:`_reconcile`).
        - ``stop``: finished (the server is stopped).
        """
        notes: list[str] = []
        for entry in self.ledger.pending(self.model, self.name):
            detail, run_id = entry["detail"], entry["run_id"]
            if entry["action"] == "start":
                slot = state["candidates"].get(run_id)
                if slot and slot.get("port") == detail["port"] and slot.get("ready") and self._slot_alive(slot):
                    self.ledger.done(entry["id"], "the server was ready; its confirmation was lost")
                    continue
                self._stop_port(int(detail["port"]))
                if slot and slot.get("port") == detail["port"]:
                    del state["candidates"][run_id]
                note = (f"run {run_id} was killed while it started version {detail['version']} on port "
                        f"{detail['port']}; that server is stopped")
                self.ledger.undone(entry["id"], note)
            elif entry["action"] == "switch":
                if (state["active"] or {}).get("pid") == (detail.get("to") or {}).get("pid") and detail.get("to"):
                    self.ledger.done(entry["id"], "the ledger already calls its server active")
                    continue
                note = f"run {run_id} was killed while it switched the front to version {(detail.get('to') or {}).get('version')}; undone"
                self.ledger.undone(entry["id"], note)
            else:  # stop
                _stop(detail.get("pid"), f"--port {detail['port']}")
                note = f"run {run_id} was killed while it stopped version {detail.get('version')}; it is stopped"
                self.ledger.done(entry["id"], note)
            _logger.warning(note)
            notes.append(note)
        reconciled = self._reconcile(state)
        if reconciled:
            notes.append(reconciled)
        if notes:
            self._save(state)
        return notes

    def _stop_port(self, port: int) -> None:
        """Stop any server of this target listening with ``--port port`` (its pid may never have been recorded)."""
        import psutil

        marker = f"--port {port}"
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if marker in cmdline and str(self.state_dir) in cmdline:
                _stop(proc.info["pid"], marker)

    def _journaled_stop(self, run_id: str, slot: dict[str, Any] | None) -> None:
        """Stop a server, journaled: a kill half-way is finished by the next step."""
        if not self._slot_alive(slot):
            return
        assert slot is not None
        entry = self.ledger.intend(self.model, self.name, run_id, "stop",
                                   {"pid": slot["pid"], "port": slot["port"], "version": slot["version"]})
        self._stop_slot(slot)
        self.ledger.done(entry)

    # -- processes ---------------------------------------------------------------------------

    def _server_marker(self, slot: dict[str, Any]) -> str:
        return f"--port {slot['port']}"

    def _slot_alive(self, slot: dict[str, Any] | None) -> bool:
        return slot is not None and _alive(slot.get("pid"), self._server_marker(slot))

    def _stop_slot(self, slot: dict[str, Any] | None) -> None:
        if slot:
            _stop(slot.get("pid"), self._server_marker(slot))

    def _wait_ready(self, proc: subprocess.Popen[bytes], url: str, log_path: Path, digest: str) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_seconds
        why: str | None = "it was never asked"
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                message = f"{self.runtime.name} server for {self.model} exited with code {code} before it was ready"
                if code == EXIT_TAMPERED:
                    raise TamperedArtifact(f"{message}: it refused the artifact.\n{_tail(log_path)}")
                raise DeployFailed(f"{message}. Log {log_path}:\n{_tail(log_path)}")
            why = self.runtime.ready(url, self.model, digest, token=self.token)
            if why is None:
                return
            time.sleep(0.2)
        _stop(proc.pid, f"--port {url.rsplit(':', 1)[1]}")
        raise DeployFailed(
            f"{self.runtime.name} server for {self.model} ({digest}) was not ready within "
            f"deploy.local.ready_timeout_seconds={self.config.ready_timeout_seconds} ({why}). "
            f"Log {log_path}:\n{_tail(log_path)}"
        )

    def _start_server(self, state: dict[str, Any], candidate: Candidate, artifact_dir: Path,
                      run_id: str) -> dict[str, Any]:
        host = self.config.host
        port = free_port(host)
        grpc_port = None
        args = dict(self.runtime_args)
        if self.grpc:
            grpc_port = free_port(host)
            while grpc_port == port:
                grpc_port = free_port(host)
            args["grpc_port"] = grpc_port
        log_path = self.state_dir / "logs" / f"v{candidate.version}-{port}.log"
        self.runtime.check_artifact(artifact_dir, candidate.digest)
        cmd = self.runtime.command(python=self.runtime.python(), artifact=str(artifact_dir), digest=candidate.digest,
                                   model=self.model, version=candidate.version, host=host, port=port,
                                   args=args)
        url = f"http://{host}:{port}"
        try:
            env = server_env(os.environ, runtime=self.runtime, fixed=self.runtime.env(self.state_dir / "runtime"),
                             pythonpath=str(SERVING_PATH), token=self.token)
        except ValueError as exc:
            raise DeployFailed(f"cannot start {self.model} version {candidate.version}: {exc}") from None
        entry = self.ledger.intend(self.model, self.name, run_id, "start",
                                   {"version": candidate.version, "digest": candidate.digest, "port": port})
        proc = _spawn(cmd, log_path, env)
        slot = {"run_id": run_id, "version": candidate.version, "digest": candidate.digest, "host": host,
                "port": port, "pid": proc.pid, "url": url, "log": str(log_path), "started_at": now(), "ready": False}
        if grpc_port is not None:
            slot.update(grpc_port=grpc_port, grpc_url=f"{host}:{grpc_port}")
        state["candidates"][run_id] = slot
        self._save(state)  # recorded before it is waited for: a kill now leaves a server the ledger knows
        try:
            self._wait_ready(proc, url, log_path, candidate.digest)
        except BaseException:
            _stop(proc.pid, f"--port {port}")
            state["candidates"].pop(run_id, None)
            self.ledger.undone(entry, "it did not become ready; stopped")
            raise
        slot["ready"] = True
        self._save(state)
        self.ledger.done(entry)
        return slot

    def _front_alive(self, state: dict[str, Any]) -> bool:
        front = state.get("front") or {}
        return bool(front) and _alive(front.get("pid"), f"--port {self.config.port}")

    def _check_front_port_free(self) -> None:
        """The front is not running: refuse when another process listens on its port (or its gRPC port)."""
        ports = [("deploy.local.port", self.config.port)]
        if self.grpc and self.config.grpc_port is not None:
            ports.append(("deploy.local.grpc_port", self.config.grpc_port))
        for field, port in ports:
            with contextlib.suppress(OSError), socket.create_connection((self.config.host, port), timeout=1):
                raise DeployFailed(
                    f"port {port} on {self.config.host} is taken by another process, so the front for "
                    f"{self.model} cannot start. Fix: free it, or set another {field} in model.yaml."
                )

    def _ensure_front(self, state: dict[str, Any]) -> None:
        wanted_grpc = self.config.grpc_port if self.grpc else None
        if self._front_alive(state):
            if (state["front"] or {}).get("grpc_port") == wanted_grpc:
                return
            # serving.grpc or deploy.local.grpc_port changed: the running front listens on the old ports.
            # New connections are refused for the moment it takes to start it again; open ones are cut.
            _logger.warning("the front of %s listens with gRPC port %s, the spec asks for %s: restarting it",
                            self.model, state["front"].get("grpc_port"), wanted_grpc)
            _stop(state["front"].get("pid"), f"--port {self.config.port}")
            state["front"] = None
        self._check_front_port_free()
        self.front_state = self.state_dir / "front.json"  # this worker starts the front: its own file
        self.front_state.parent.mkdir(parents=True, exist_ok=True)
        if not self.front_state.exists():
            write_state(self.front_state, None, None)
        log_path = self.state_dir / "logs" / "front.log"
        cmd = [sys.executable, "-m", "model_server.front", "--host", self.config.host, "--port",
               str(self.config.port), "--state", str(self.front_state)]
        if wanted_grpc is not None:
            cmd += ["--grpc-port", str(wanted_grpc)]
        proc = _spawn(cmd, log_path, server_env(os.environ, pythonpath=str(SERVING_PATH)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DeployFailed(f"front proxy for {self.model} exited: {_tail(log_path)}")
            with contextlib.suppress(OSError), socket.create_connection((self.config.host, self.config.port), 1):
                if wanted_grpc is not None:
                    socket.create_connection((self.config.host, wanted_grpc), 1).close()
                state["front"] = {"host": self.config.host, "port": self.config.port, "pid": proc.pid,
                                  "state_file": str(self.front_state), "grpc_port": wanted_grpc}
                return
            time.sleep(0.1)
        raise DeployFailed(f"front proxy for {self.model} did not listen on port {self.config.port} in 30 s")

    def _signal(self, slot: dict[str, Any] | None, signum: int) -> None:
        if self._slot_alive(slot):
            assert slot is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot["pid"], signum)

    def _route(self, slot: dict[str, Any] | None, previous: dict[str, Any] | None = None) -> None:
        """Point the front at ``slot`` (None: no upstream) and wait until it serves that digest.

        The front moves new connections only; ``previous`` is then told to drain (SIGUSR1: its
        responses close the connection), so keep-alive clients reconnect to ``slot`` after their
        current request. ``slot`` is told to stop draining (SIGUSR2), in case it drained before.
        """
        if slot is None:
            write_state(self.front_state, None, None)
            return
        grpc_port = slot.get("grpc_port") if self.grpc else None
        write_state(self.front_state, slot["host"], slot["port"], grpc_port=grpc_port, version=slot["version"],
                    digest=slot["digest"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.runtime.served_digest(self.front_url, self.model, token=self.token) == slot["digest"] \
                    and self._grpc_front_serves(slot):
                if self.runtime.drain_signals:
                    self._signal(slot, signal.SIGUSR2)
                    if previous is not None and previous.get("pid") != slot.get("pid"):
                        self._signal(previous, signal.SIGUSR1)
                return
            time.sleep(0.1)
        raise DeployFailed(f"front {self.front_url} did not switch to version {slot['version']} within 30 s")

    def _grpc_front_serves(self, slot: dict[str, Any]) -> bool:
        """Without gRPC, True; with it, whether a new gRPC channel through the front reaches ``slot``'s digest."""
        if not self.grpc or not slot.get("grpc_port"):  # a version started before serving.grpc: none to check
            return True
        from model_delivery.smoke import grpc_served_digest

        assert self.front_grpc is not None
        return grpc_served_digest(self.front_grpc, timeout=2.0) == slot["digest"]

    # -- the protocol ------------------------------------------------------------------------

    def plan(self, candidate: Candidate) -> dict[str, Any]:
        """Dry run: verify the artifact in the store and say what stage and shift would do; start nothing."""
        self.store.verify(self.model, candidate.digest)
        state = self._read()
        active = state["active"] if self._slot_alive(state["active"]) else None
        front_up = self._front_alive(state)
        if not front_up:
            self._check_front_port_free()
        if active and active["digest"] == candidate.digest:
            note = f"version {active['version']} with this digest already serves on {self.front_url}: no change"
        else:
            serving = f"version {active['version']}" if active else "nothing"
            note = (f"would start version {candidate.version} on a free port of {self.config.host}, then switch "
                    f"{self.front_url} from {serving} to it" + ("" if front_up else " (starting the front)"))
        return {"version": candidate.version, "digest": candidate.digest, **self._urls(),
                "serving": active["version"] if active else None, "artifact_verified": True, "note": note}

    def stage(self, candidate: Candidate, run_id: str) -> dict[str, Any]:
        """Fetch and verify the artifact (and its signature, per the spec's ``signing``), start it on a fresh port,
        wait until it is ready.

        :raises SignatureRefused: the signature is missing (required) or does not hold; nothing was started.
        """
        artifact_dir = self.state_dir / "artifacts" / parse_digest(candidate.digest)
        self.store.fetch(self.model, candidate.digest, artifact_dir)
        signature = self._check_signature(candidate.digest, artifact_dir)
        with self._locked() as state:
            for slot in (state["candidates"].get(run_id), state["active"]):
                if slot and slot["digest"] == candidate.digest and self._slot_alive(slot) \
                        and (not self.grpc or slot.get("grpc_port")):
                    state["candidates"][run_id] = slot
                    return {**slot, **signature,
                            "note": f"version {slot['version']} with this digest is already running"}
            self._journaled_stop(run_id, state["candidates"].pop(run_id, None))
            slot = self._start_server(state, candidate, artifact_dir, run_id)
            return {**slot, **signature, "note": "started beside production, no traffic yet"}

    def _check_signature(self, digest: str, artifact_dir: Path) -> dict[str, Any]:
        """Verify the fetched artifact against its signature bundle in the store, when the spec signs."""
        if self.signing is None or self.signing.mode == "off":
            return {}
        from model_delivery.signing import check_artifact, trust_of

        return check_artifact(self.store, self.model, digest, artifact_dir, trust_of(self.signing, self.model_dir),
                              log=_logger.info)

    def shift(self, run_id: str) -> dict[str, Any]:
        """Send production traffic to this run's candidate; keep the old version warm."""
        with self._locked() as state:
            candidate = state["candidates"].get(run_id)
            active = state["active"]
            if candidate is None and active and active.get("run_id") == run_id and self._slot_alive(active):
                candidate = active  # a retry of a shift that had finished (killed before it returned)
            if not self._slot_alive(candidate):
                raise DeployFailed(f"run {run_id} has no running candidate for {self.model}: deploy_staging first")
            self._ensure_front(state)
            if active and active["pid"] == candidate["pid"]:
                self._route(candidate)
                return {**self._urls(), "version": candidate["version"], "digest": candidate["digest"],
                        "note": "already serving"}
            if state["standby"] and state["standby"]["pid"] != (active or {}).get("pid"):
                self._journaled_stop(run_id, state["standby"])
            entry = self.ledger.intend(self.model, self.name, run_id, "switch", {"to": candidate, "from": active})
            self._route(candidate, previous=active)
            state["standby"] = active if self._slot_alive(active) else None
            state["active"] = {**candidate, "shifted_at": now()}
            del state["candidates"][run_id]
            self._save(state)
            self.ledger.done(entry)
            standby = state["standby"]
            return {**self._urls(), "version": candidate["version"], "digest": candidate["digest"],
                    "standby": standby["version"] if standby else None, "note": "front switched"}

    def retire(self, run_id: str) -> dict[str, Any]:
        """After promotion: stop the previous version kept warm for rollback."""
        with self._locked() as state:
            standby = state["standby"]
            if standby and standby["pid"] != (state["active"] or {}).get("pid"):
                self._journaled_stop(run_id, standby)
                state["standby"] = None
                return {"stopped": standby["version"]}
            state["standby"] = None
            return {"stopped": None}

    def rollback(self, run_id: str) -> dict[str, Any]:
        """Put back what served before this run; stop this run's candidate."""
        with self._locked() as state:
            recovered = {"recovered": "; ".join(self.recovered)} if self.recovered else {}
            active, standby = state["active"], state["standby"]
            if active and active.get("run_id") == run_id:
                back = standby if standby and self._slot_alive(standby) else None
                entry = self.ledger.intend(self.model, self.name, run_id, "switch", {"to": back, "from": active})
                self._route(back, previous=active)
                # nothing warm to go back to: the first release, or the standby was retired
                action = "switched-back" if back else "stopped-no-standby"
                state["active"], state["standby"] = back, None
                self._save(state)
                self.ledger.done(entry)
                self._journaled_stop(run_id, active)
                return {"action": action, "serving": back["version"] if back else None, **recovered}
            candidate = state["candidates"].pop(run_id, None)
            serving = active["version"] if active else None
            if candidate is None or (active and candidate["pid"] == active["pid"]):
                return {"action": "none", "serving": serving, **recovered}
            self._journaled_stop(run_id, candidate)
            return {"action": "stopped-candidate", "serving": serving, **recovered}

    def status(self) -> dict[str, Any]:
        """What runs now, with liveness."""
        state = self._read()
        return {
            "front_url": self.front_url,
            **({"front_grpc": self.front_grpc} if self.grpc else {}),
            "active": state["active"],
            "active_alive": self._slot_alive(state["active"]),
            "standby": state["standby"],
            "candidates": state["candidates"],
        }


def _defaults(state: dict[str, Any]) -> dict[str, Any]:
    for key in ("front", "active", "standby"):
        state.setdefault(key, None)
    state.setdefault("candidates", {})
    return state
