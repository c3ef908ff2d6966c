"""The ``ansible`` deploy target: a rolling update of a fleet of hosts behind HAProxy.

The playbooks and the ``model_server`` role live in ``include/ansible`` (see
docs/deploy-ansible.md). This module only decides what to run and remembers what it did:

* ``stage``: fetch the artifact from the store (verified), then ``stage.yml``: every host
  gets the runtime and the artifact (copied, re-hashed on the host) without switching;
  the staging host starts the candidate on its staging port, with no traffic.
* ``shift``: ``rollout.yml``: batch by batch (``serial``), each host is drained in HAProxy,
  switched, health-checked and put back. On any failed host the hosts this run touched
  are put back at once (``rollback.yml``), then the stage fails: a failed release is never
  left half-deployed, not even while Airflow waits to retry.
* ``retire``: ``retire.yml``: stop the staging instance, prune old artifacts.
* ``rollback``: ``rollback.yml`` on every host this run touched, with the artifact each one
  served before.

State (the model's ``ansible`` state in the deployment ledger) records, per host, what it
serves and, per run, what each host served before it. It is changed only under the model's
lock in the ledger, so a restarted Airflow, or another worker, knows the previous version per
host. Each playbook is journaled with the pid of its ``ansible-playbook``: a killed task's
playbook is stopped by the next step (:meth:`AnsibleTarget.recover`).

Commands, inventories and variable files are built from data (lists, ``json.dumps``,
``yaml.safe_dump``). Secrets from Airflow connections go to 0600 files in a private
temporary directory, are passed by path, are masked in the streamed output, and are
never logged or returned. ``ansible-playbook`` starts with an allow-listed environment
(:data:`CONTROLLER_ENV` and our ``ANSIBLE_*`` settings): none of the worker's Airflow
connections, variables, config or cloud credentials reach it, its lookups, or the modules of a
local-connection host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import DeployFailed, InvalidModelSpec, ReleaseFailed, TamperedArtifact
from model_delivery.procs import stop, tracked
from model_delivery.records import now
from model_delivery.runtimes import get_runtime
from model_delivery.settings import PROJECT_ROOT
from model_server.manifest import MANIFEST_NAME, parse_digest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from model_delivery.deploy import Candidate
    from model_delivery.settings import Settings
    from model_delivery.spec import ModelSpec
    from model_delivery.store import ArtifactStore

ANSIBLE_DIR = PROJECT_ROOT / "include" / "ansible"
SERVING_PACKAGE = PROJECT_ROOT / "include" / "serving" / "model_server"
"""The model server package the role installs on every host (its ``*.py``; the role's model_server_source_dir)."""
BUNDLE_FILE_MAX = 4 << 20
BUNDLE_MAX = 64 << 20
"""Push: an artifact's files up to BUNDLE_FILE_MAX bytes, up to BUNDLE_MAX in all, go to each host in one archive
(one transfer and one unpack per host instead of two module runs per file); larger ones are copied one by one."""
KEEP_RUNS = 20
KEEP_ARTIFACTS = 3  # the most recently delivered digests stay on the hosts, for rollbacks
CACHE_GRACE_SECONDS = 3600.0
"""The controller's cache of fetched artifacts (push) keeps what the hosts keep, and anything used this recently:
a stage of another run may have fetched a digest it has not recorded yet."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
_logger = logging.getLogger(__name__)


class RolloutFailed(ReleaseFailed):
    """The rolling update failed on a host; every host it touched was put back (no retry)."""


@dataclass
class PlaybookResult:
    """What one ansible-playbook run did, from the md_summary callback."""

    playbook: str
    returncode: int
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    check: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return dict(self.summary.get("stats") or {})

    @property
    def custom(self) -> dict[str, dict[str, Any]]:
        return {h: v for h, v in (self.summary.get("custom") or {}).items() if h != "_run"}

    @property
    def changed(self) -> int:
        return sum(int(s.get("changed", 0)) for s in self.stats.values())

    def changed_by_host(self) -> dict[str, int]:
        return {host: int(s.get("changed", 0)) for host, s in self.stats.items()}

    def problems(self) -> list[str]:
        """One line per failed or unreachable host: the task and its message."""
        lines = []
        for kind in ("failures", "unreachable"):
            for host, items in sorted((self.summary.get(kind) or {}).items()):
                for item in items:
                    lines.append(f"{host}: {item['task']}: {item['msg']}".strip())
        if not lines and not self.ok:
            lines.append(f"ansible-playbook {self.playbook} exited with code {self.returncode}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"playbook": self.playbook, "returncode": self.returncode, "changed": self.changed,
                "changed_by_host": self.changed_by_host(), "seconds": round(self.seconds, 2), "check": self.check}


@dataclass
class _Secrets:
    """Command-line arguments that name secret files, and the values to mask in output."""

    args: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)


CONTROLLER_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "SSH_AUTH_SOCK")
"""What ``ansible-playbook`` takes from the worker's environment (names, or ``fnmatch`` patterns), when set there;
the ``ANSIBLE_*`` settings it runs with are ours (:meth:`AnsibleTarget._env`), never the worker's."""


def controller_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that :data:`CONTROLLER_ENV` allows."""
    return {name: value for name, value in environ.items()
            if any(fnmatchcase(name, pattern) for pattern in CONTROLLER_ENV)}


def _write_private(path: Path, content: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)
    return path


def _pack(path: Path, members: list[tuple[Path, str]]) -> Path:
    """Write an uncompressed tar of ``(file, name in the archive)`` at ``path`` (replaced whole), owned by root,
    mode 0644, with each file's own modification time (Python's bytecode cache on the host keys on it)."""
    import tarfile

    partial = path.with_name(f".{path.name}.partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        for source, name in members:
            info = archive.gettarinfo(str(source), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with source.open("rb") as fh:
                archive.addfile(info, fh)
    os.replace(partial, path)
    return path


def _connection(conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


def ansible_playbook_binary() -> str:
    """The ansible-playbook of this interpreter's environment (the pinned ansible-core)."""
    local = Path(sys.executable).parent / "ansible-playbook"
    if local.exists():
        return str(local)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise DeployFailed("ansible-playbook not found. Fix: pip install -r requirements.txt -c constraints.txt")
    return found


class AnsibleTarget:
    """Rolling delivery of one model to the hosts of an inventory group, behind HAProxy.

    :param spec: the model's spec (``deploy.ansible`` is used).
    :param settings: where deploy state lives (``settings.deploy_dir / model``).
    :param store: the artifact store to fetch from.
    :param log: where Ansible's output streams, line by line (``log(fmt, *args)``).
    """

    name = "ansible"

    def __init__(self, spec: ModelSpec, settings: Settings, store: ArtifactStore,
                 log: Callable[..., None] | None = None) -> None:
        if spec.deploy.ansible is None:
            raise InvalidModelSpec(f"model {spec.name!r} has no deploy.ansible section (see docs/deploy-ansible.md)")
        self.spec = spec
        self.model = spec.name
        self.config = spec.deploy.ansible
        self.model_dir = settings.models_dir / spec.name
        self.state_dir = settings.deploy_dir / spec.name
        self.ledger = settings.open_ledger()
        self.store = store
        self.log: Callable[..., None] = log or _logger.info
        self.runtime = get_runtime(spec.serving.runtime)
        if self.config.inventory is not None and not (self.model_dir / self.config.inventory).is_file():
            raise InvalidModelSpec(
                f"{self.model_dir / 'model.yaml'}: field 'deploy.ansible.inventory' names "
                f"{self.config.inventory!r}, which does not exist in {self.model_dir}. Fix: add the inventory file "
                "or correct the name."
            )

    @classmethod
    def from_spec(cls, spec: ModelSpec, settings: Settings, store: ArtifactStore,
                  log: Callable[..., None] | None = None) -> AnsibleTarget:
        """The target of ``spec``'s ``deploy.ansible`` section."""
        return cls(spec, settings, store, log=log)

    @property
    def front_url(self) -> str:
        return self.config.load_balancer.front_url.rstrip("/")

    @property
    def front_grpc(self) -> str | None:
        """``host:port`` of the load balancer's gRPC frontend (None without ``serving.grpc``)."""
        return self.config.load_balancer.grpc_front if self.spec.serving.grpc else None

    def _grpc(self, address: str | None) -> dict[str, Any]:
        """``{"grpc_url": address}`` with ``serving.grpc``, for results; else nothing."""
        return {"grpc_url": address} if self.spec.serving.grpc and address else {}

    # -- state -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the model's lock in the ledger, settle what a killed step left, and yield the state; it is
        saved on exit (also on failure) and before each playbook."""
        with self.ledger.locked_state(self.model, self.name) as state:
            self._defaults(state)
            self.recover(state)
            try:
                yield state
            finally:
                self._prune(state)

    @staticmethod
    def _prune(state: dict[str, Any]) -> None:
        runs = state["runs"]
        for old in sorted(runs, key=lambda r: runs[r].get("at", ""))[:-KEEP_RUNS]:
            del runs[old]

    def _save(self, state: dict[str, Any]) -> None:
        self._prune(state)
        self.ledger.save_state(self.model, self.name, state)

    def _read(self) -> dict[str, Any]:
        return self._defaults(self.ledger.state(self.model, self.name))

    def recover(self, state: dict[str, Any]) -> list[str]:
        """Settle every playbook the journal holds as running (its task was killed); what was done.

        Its ``ansible-playbook`` is stopped if it still runs (SIGINT, then SIGKILL to its group), so a
        retry never runs a second rollout beside it, and its private directories (variables, secret
        files, SSH control sockets) are removed. A killed rolling update counts every host as
        touched (any may have switched) and is ``interrupted``: the retry runs it to the end, or the
        rollback puts every host back.
        """
        notes: list[str] = []
        for entry in self.ledger.pending(self.model, self.name):
            detail, run_id = entry["detail"], entry["run_id"]
            stopped = stop(detail.get("pid"), "ansible-playbook", first=signal.SIGINT)
            for private in detail.get("private_dirs") or []:  # its variables file and secret files
                shutil.rmtree(private, ignore_errors=True)
            run = state["runs"].get(run_id)
            note = f"run {run_id} was killed while {detail['playbook']} ran" + (
                "; its ansible-playbook, still running, was stopped" if stopped else "")
            if detail["playbook"] == "rollout.yml" and run is not None:
                run["touched"] = sorted(set(run["touched"]) | set(run["before"]))
                run["status"] = "interrupted"
                note += "; every host it may have switched counts as touched"
            self.ledger.undone(entry["id"], note)
            self.log("ledger: %s", note)
            notes.append(note)
        for run_id, run in state["runs"].items():
            # shift holds the model's lock from "shifting" to its end: a run still "shifting" here was killed
            # after its playbook ended (its entry is done), before it saved which hosts switched.
            if run.get("status") == "shifting":
                run["touched"] = sorted(set(run["touched"]) | set(run["before"]))
                run["status"] = "interrupted"
                note = f"run {run_id} was killed after its rolling update, before it was recorded; every host " \
                       "counts as touched"
                self.log("ledger: %s", note)
                notes.append(note)
        if notes:
            self._save(state)
        return notes

    @staticmethod
    def _defaults(state: dict[str, Any]) -> dict[str, Any]:
        state.setdefault("hosts", {})
        state.setdefault("runs", {})
        state.setdefault("active", None)
        state.setdefault("delivered", [])  # digests in the order they were delivered, newest last
        return state

    @staticmethod
    def _serving(state: dict[str, Any]) -> str | None:
        versions = sorted({str(h["version"]) for h in state["hosts"].values() if h.get("digest")})
        if not versions:
            return None
        return versions[0] if len(versions) == 1 else "mixed: " + ", ".join(versions)

    # -- running ansible ---------------------------------------------------------------------

    def _base_vars(self) -> dict[str, Any]:
        cfg, lb = self.config, self.config.load_balancer
        extra: dict[str, Any] = {
            "model_delivery_group": cfg.group,
            "model_delivery_serial": cfg.serial,
            "model_delivery_max_fail_percentage": cfg.max_fail_percentage,
            "model_delivery_become": cfg.become_conn_id is not None,
            "model_delivery_staging_host": cfg.staging_host or "",
            "model_server_model": self.model,
            "model_server_lb_socket": lb.runtime_api,
            "model_server_lb_backend": lb.backend or self.model,
            "model_server_lb_host": lb.lb_host,
            "model_server_grpc": self.spec.serving.grpc,
            "model_server_ready_timeout": self.ready_timeout,
            "model_server_drain_timeout": cfg.drain_timeout_seconds,
            **self._runtime_vars(),
        }
        if self.spec.serving.grpc:
            extra["model_server_lb_grpc_backend"] = lb.grpc_backend or f"{lb.backend or self.model}_grpc"
        if cfg.remote_root:
            extra["model_server_root"] = cfg.remote_root
        return extra

    @property
    def ready_timeout(self) -> float:
        """``ready_timeout_seconds`` when the spec sets it, else the runtime's default (vLLM loads for minutes)."""
        if "ready_timeout_seconds" in self.config.model_fields_set:
            return self.config.ready_timeout_seconds
        return max(self.config.ready_timeout_seconds, self.runtime.default_ready_timeout)

    def _runtime_vars(self) -> dict[str, Any]:
        """The serving runtime, for the role: its command with whole-argument placeholders the supervisor fills
        in on each host, its variables, and how its readiness is probed."""
        args = dict(self.spec.serving.args)
        if self.runtime.stop_timeout_arg:
            args.setdefault(self.runtime.stop_timeout_arg, "{graceful_timeout}")
        command = self.runtime.command(python="{python}", artifact="{artifact}", digest="{digest}", model="{model}",
                                       version="{version}", host="{host}", port="{port}", args=args)  # type: ignore[arg-type]
        return {"model_server_runtime": self.runtime.name, "model_server_command": command,
                "model_server_env": self.runtime.host_env(), "model_server_ready_protocol": self.runtime.protocol,
                "model_server_token_env": self.runtime.token_env or ""}

    def _inventory(self, tmp: Path) -> Path:
        if self.config.inventory is not None:
            return self.model_dir / self.config.inventory
        import yaml

        assert self.config.inventory_conn_id is not None
        extra = _connection(self.config.inventory_conn_id).extra_dejson
        inventory = extra.get("inventory", extra)
        if isinstance(inventory, str):
            inventory = yaml.safe_load(inventory)
        if not isinstance(inventory, dict) or not inventory:
            raise InvalidModelSpec(
                f"Airflow connection {self.config.inventory_conn_id!r} (deploy.ansible.inventory_conn_id) holds no "
                "inventory. Fix: put the inventory mapping in its extra, or under the extra's key 'inventory'."
            )
        return _write_private(tmp / "inventory.yml", yaml.safe_dump(inventory, sort_keys=False))

    def _secrets(self, tmp: Path) -> _Secrets:
        secrets = _Secrets()
        if self.config.ssh_conn_id:
            conn = _connection(self.config.ssh_conn_id)
            extra = conn.extra_dejson
            if conn.login:
                secrets.args += ["--user", str(conn.login)]
            key = extra.get("private_key")
            if key:
                key_text = str(key).replace("\\n", "\n")
                key_text += "" if key_text.endswith("\n") else "\n"
                secrets.args += ["--private-key", str(_write_private(tmp / "ssh_key", key_text))]
                secrets.masked += [line for line in key_text.splitlines() if len(line) > 8 and "-----" not in line]
            elif extra.get("key_file"):
                secrets.args += ["--private-key", str(extra["key_file"])]
            secrets.args += self._host_key_args(extra, tmp)
        token = self._token()
        if token:  # the servers' bearer token: a private variables file, masked in the output
            secrets.args += ["--extra-vars", "@" + str(_write_private(tmp / "serving_token.json",
                                                                      json.dumps({"model_server_token": token})))]
            secrets.masked.append(token)
        if self.config.become_conn_id:
            password = _connection(self.config.become_conn_id).password or ""
            secrets.args += ["--become", "--become-password-file",
                             str(_write_private(tmp / "become_password", password + "\n"))]
            if password:
                secrets.masked.append(password)
        return secrets

    def _token(self) -> str | None:
        """The servers' bearer token (``serving.token_conn_id``), read for each playbook: a rotated one reaches the
        hosts, whose servers restart with it."""
        from model_delivery.serving_auth import serving_token

        return serving_token(self.spec.serving.token_conn_id)

    def _host_key_args(self, extra: dict[str, Any], tmp: Path) -> list[str]:
        """Host key checking from the SSH connection's extra: ``known_hosts`` (the lines of a known_hosts
        file: only those keys are accepted), or ``no_host_key_check: true``; neither: ssh's own known_hosts."""
        import shlex

        known = extra.get("known_hosts")
        if known:
            text = "\n".join(known) if isinstance(known, list) else str(known)
            path = _write_private(tmp / "known_hosts", text.strip() + "\n")
            options = ["-o", f"UserKnownHostsFile={path}", "-o", "StrictHostKeyChecking=yes"]
        elif str(extra.get("no_host_key_check", "")).lower() in ("true", "1", "yes"):
            options = ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
        else:
            return []
        return [f"--ssh-common-args={shlex.join(options)}"]  # one token: argparse would take "-o" for an option

    def build_command(self, playbook: str, inventory: Path, vars_file: Path, *, check: bool,
                      secret_args: list[str] | None = None) -> list[str]:
        """The ansible-playbook command line, as a list (never a shell string)."""
        cmd = [ansible_playbook_binary(), str(ANSIBLE_DIR / playbook), "--inventory", str(inventory),
               "--extra-vars", f"@{vars_file}"]
        if check:
            cmd += ["--check", "--diff"]
        return cmd + list(secret_args or [])

    def _env(self, tmp: Path, control_dir: str) -> dict[str, str]:
        """The whole environment of ``ansible-playbook``: the worker's variables of :data:`CONTROLLER_ENV`, then
        ours. Nothing else is inherited: no Airflow connections, variables or config, no cloud credentials (a
        local-connection host's modules, and every lookup, would see them); secrets go by 0600 files."""
        env = controller_env(os.environ)
        env.update(
            ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=control_dir,
            ANSIBLE_RETRY_FILES_ENABLED="0",
            MODEL_DELIVERY_ANSIBLE_SUMMARY=str(tmp / "summary.json"),
            PYTHONUNBUFFERED="1",
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        return env

    def run_playbook(self, playbook: str, extra_vars: dict[str, Any], *, check: bool = False,
                     run_id: str | None = None) -> PlaybookResult:
        """Run one playbook, streaming its output into the log; return what the summary callback saw.

        With ``run_id`` (every run that changes hosts), it is journaled before it starts, with its
        pid once started, and confirmed when it exits: a killed task's playbook is found and stopped.
        """
        if run_id is None:
            return self._run_playbook(playbook, extra_vars, check=check, entry=None)
        with self.ledger.change(self.model, self.name, run_id, "playbook", {"playbook": playbook}) as entry:
            return self._run_playbook(playbook, extra_vars, check=check, entry=entry)

    def _run_playbook(self, playbook: str, extra_vars: dict[str, Any], *, check: bool,
                      entry: int | None) -> PlaybookResult:
        scratch = self.state_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        # SSH connections are shared within this run only (a master from an earlier run must not carry its
        # login, an older key or an unchecked host key, into this one), under a short path: a unix socket
        # path may not exceed 108 bytes.
        with tempfile.TemporaryDirectory(dir=scratch, prefix="run-") as tmp_name, \
                tempfile.TemporaryDirectory(prefix="md-ssh-") as control_dir:
            tmp = Path(tmp_name)
            os.chmod(tmp, 0o700)
            if entry is not None:  # a killed task leaves these behind: the next step removes them (secrets)
                self.ledger.amend(entry, {"private_dirs": [tmp_name, control_dir]})
            package = _pack(tmp / "model_server.tar", [(path, path.name) for path in sorted(SERVING_PACKAGE.glob("*.py"))])
            # The package's files and the role's identity of the runtime (which hashes model_server_source_dir)
            # come from one directory: an inventory cannot name another.
            vars_file = _write_private(tmp / "vars.json", json.dumps(
                {**self._base_vars(), "model_server_package_archive": str(package),
                 "model_server_source_dir": str(SERVING_PACKAGE), **extra_vars}))
            secrets = self._secrets(tmp)
            cmd = self.build_command(playbook, self._inventory(tmp), vars_file, check=check, secret_args=secrets.args)
            self.log("ansible: running %s%s on group %s (serial %s)", playbook, " in check mode" if check else "",
                     self.config.group, self.config.serial)
            started = time.monotonic()
            returncode = self._stream(cmd, self._env(tmp, control_dir), secrets.masked, entry)
            summary_path = tmp / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        result = PlaybookResult(playbook, returncode, summary, time.monotonic() - started, check)
        self.log("ansible: %s exited %s after %.1f s; changed=%s %s", playbook, returncode, result.seconds,
                 result.changed, json.dumps(result.changed_by_host(), sort_keys=True))
        return result

    def _stream(self, cmd: list[str], env: dict[str, str], masked: list[str], entry: int | None) -> int:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(ANSIBLE_DIR), text=True, errors="replace", start_new_session=True)
        if entry is not None:
            self.ledger.amend(entry, {"pid": proc.pid})
        with tracked(proc.pid, "ansible-playbook"):
            return self._follow(proc, cmd, masked)

    def _follow(self, proc: subprocess.Popen[str], cmd: list[str], masked: list[str]) -> int:
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)

        timer = threading.Timer(self.config.timeout_seconds, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                for secret in masked:
                    line = line.replace(secret, "***")
                if line.strip():
                    self.log("ansible | %s", line)
            returncode = proc.wait()
        finally:
            timer.cancel()
        if timed_out.is_set():
            raise DeployFailed(f"ansible-playbook {cmd[1]} ran longer than deploy.ansible.timeout_seconds="
                               f"{self.config.timeout_seconds:g} and was killed")
        return returncode

    # -- helpers -----------------------------------------------------------------------------

    def _artifact(self, digest: str) -> tuple[Path, dict[str, Any]]:
        """Fetch (and verify) an artifact from the store into the local cache Ansible copies from (push).

        :return: the verified directory and its manifest.
        """
        dest = self.state_dir / "artifacts" / parse_digest(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fetched = Path(self.store.fetch(self.model, digest, dest, log=self.log))  # verified against the digest
        manifest = json.loads((fetched / MANIFEST_NAME).read_text())
        self.runtime.check_files([entry["path"] for entry in manifest["files"]], digest)  # vLLM: no pickle to a host
        return fetched, manifest

    @staticmethod
    def _bundle(fetched: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """The small files of a fetched artifact (and its manifest) packed into one archive beside it, for push.

        Rebuilt from the verified files on every use; each host verifies every file against the manifest and the
        manifest against the digest before anything is moved into place, whatever way they came.
        """
        bundled, total = [], 0
        for entry in sorted(manifest["files"], key=lambda e: e["path"]):
            if entry["size"] <= BUNDLE_FILE_MAX and total + entry["size"] <= BUNDLE_MAX:
                bundled.append(entry["path"])
                total += entry["size"]
        members = [(fetched / path, path) for path in [*bundled, MANIFEST_NAME]]
        archive = _pack(fetched.with_name(f"{fetched.name}.bundle.tar"), members)
        return {"bundle": str(archive), "bundled": [*bundled, MANIFEST_NAME]}

    def _pull_source(self, digest: str) -> tuple[Path, dict[str, Any]]:
        """Where hosts copy the artifact from themselves (``artifact_transfer: pull``): the store's blobs and the
        artifact's folder (its manifest; legacy files), as the hosts mount them. Nothing is copied here."""
        if not self.store.is_local:
            raise DeployFailed(
                f"deploy.ansible.artifact_transfer is 'pull', but the artifact store {self.store.root} is not a "
                "filesystem the hosts can mount. Fix: use artifact_transfer: push, or a file:// artifact root "
                "that every host mounts (deploy.ansible.store_path_on_hosts).")
        manifest = self.store.read_manifest(self.model, digest)  # hashes to the digest: the hosts check it too
        self.runtime.check_files([entry["path"] for entry in manifest["files"]], digest)
        root = Path(self.store.root.path)
        on_hosts = Path(self.config.store_path_on_hosts or root)
        layout = self.store.layout
        folder = Path(layout.artifact(self.model, digest).path)

        def host_path(path: Path) -> str:
            return str(on_hosts / path.relative_to(root))

        return folder, {"transfer": "pull", "blobs": host_path(Path(layout.blobs().path)),
                        "folder": host_path(folder)}

    def _signature(self, digest: str, fetched: Path | None) -> dict[str, Any]:
        """The spec's ``signing``, checked here and handed to every host, which verifies the bundle again itself.

        Pushed artifacts are verified on the controller before any host gets a file
        (:class:`SignatureRefused`); pulled ones are not fetched here, so only a missing bundle is refused
        here and each host verifies the signature of what it pulled. Returns the role's variables: the bundle
        and the trusted key (or CA) as files on the controller, none for an unsigned optional artifact.
        """
        from model_delivery.signing import check_artifact, required_bundle, trust_of

        trust = trust_of(self.spec.signing, self.model_dir)
        if trust is None:
            return {}
        bundle = required_bundle(self.store, self.model, digest, trust, log=self.log)
        if bundle is None:
            return {}
        if fetched is not None:
            check_artifact(self.store, self.model, digest, fetched, trust, log=self.log)
        keep = self.state_dir / "signatures"
        keep.mkdir(parents=True, exist_ok=True)
        signature = keep / f"{parse_digest(digest)}.sig"
        trusted = keep / f"trust-{hashlib.sha256(trust.pem).hexdigest()[:16]}.pem"
        for path, data in ((signature, bundle), (trusted, trust.pem)):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return {"signature": str(signature), "trust": str(trusted), "trust_method": trust.method}

    def _release_vars(self, candidate: dict[str, Any], *, check_signature: bool = True) -> dict[str, Any]:
        """The playbooks' ``model_delivery_release``: the candidate, where its files come from, and its signature.

        A version being put back (``check_signature=False``) already served, and is not refused.
        """
        digest = candidate["digest"]
        if self.config.artifact_transfer == "pull":
            src, delivery = self._pull_source(digest)
            fetched = None
        else:
            src, manifest = self._artifact(digest)
            fetched = src
            delivery = {"transfer": "push", **self._bundle(src, manifest)}
        if check_signature and self.spec.signing.mode != "off":
            delivery.update(self._signature(digest, fetched))
        return {"model_delivery_release": {"version": str(candidate["version"]), "digest": digest,
                                           "artifact_src": str(src), "delivery": delivery}}

    @staticmethod
    def _record_serving(state: dict[str, Any], result: PlaybookResult) -> None:
        for host, custom in result.custom.items():
            if "md_serving" in custom:
                serving = custom["md_serving"] or {}
                state["hosts"][host] = {**serving, "at": now()} if serving.get("digest") else {"digest": None}

    def _failure(self, what: str, result: PlaybookResult) -> str:
        problems = result.problems()
        for line in problems:
            self.log("ansible: FAILED %s", line)
        return f"{what} failed: " + " | ".join(problems)

    # -- the protocol ------------------------------------------------------------------------

    def plan(self, candidate: Candidate) -> dict[str, Any]:
        """Dry run: the whole rollout in check mode (``--check --diff``); what would change per host."""
        wanted = {"version": candidate.version, "digest": candidate.digest}
        result = self.run_playbook("rollout.yml", self._release_vars(wanted), check=True)
        if not result.ok:
            raise DeployFailed(self._failure(f"dry run (check mode) of {self.model} version {candidate.version}",
                                             result))
        would = result.changed_by_host()
        hosts = ", ".join(f"{h}: {n}" for h, n in sorted(would.items())) or "no hosts"
        return {**wanted, "url": self.front_url, "would_change": would, "ansible": result.to_dict(),
                "note": f"check mode on {len(would)} host(s); changes that would be made per host: {hosts}"}

    def stage(self, candidate: Candidate, run_id: str) -> dict[str, Any]:
        """Deliver the candidate to every host without switching; start it on the staging host."""
        wanted = {"version": candidate.version, "digest": candidate.digest}
        release = self._release_vars(wanted)
        with self._locked() as state:
            run = state["runs"].setdefault(run_id, {"candidate": wanted, "before": {}, "touched": [], "at": now()})
            run.update(status="staging", candidate=wanted)
            delivered = [d for d in state["delivered"] if d != candidate.digest]
            state["delivered"] = [*delivered, candidate.digest]
            self._save(state)
            result = self.run_playbook("stage.yml", release, run_id=run_id)
            for host, custom in result.custom.items():
                before = custom.get("md_before") or {}
                if host not in run["before"]:  # the first thing seen is what served before this run
                    run["before"][host] = before if before.get("digest") else {}
                if before.get("digest"):
                    state["hosts"].setdefault(host, {"digest": before["digest"], "version": before.get("version")})
            staged = next(((h, c["md_staging"]) for h, c in result.custom.items() if "md_staging" in c), None)
            if staged:
                run["staging"] = {"host": staged[0], **staged[1]}
            if not result.ok:
                message = self._failure(f"staging {self.model} version {candidate.version}", result)
                if "exit 3)" in message:
                    raise TamperedArtifact(message)
                raise DeployFailed(message)
            run["status"] = "staged"
            common = {"version": candidate.version, "digest": candidate.digest, "hosts": sorted(result.stats),
                      "changed": result.changed, "ansible": result.to_dict()}
            if staged:
                return {"url": staged[1]["url"], **self._grpc(staged[1].get("grpc_url")), "staging_host": staged[0],
                        **common,
                        "note": f"delivered to {len(result.stats)} host(s); started on {staged[0]} without traffic"}
            return {"url": self.front_url, **self._grpc(self.front_grpc), "staging_host": None, **common,
                    "note": "every host already serves this digest; nothing was started"}

    def shift(self, run_id: str) -> dict[str, Any]:
        """The rolling update behind the load balancer; on any failure, put every touched host back."""
        with self._locked() as state:
            run = state["runs"].get(run_id)
            if run is None or run.get("status") not in ("staged", "shifting", "shifted", "failed", "retired", "interrupted"):
                raise DeployFailed(f"run {run_id} has no staged candidate for {self.model}: deploy_staging first")
            wanted = run["candidate"]
            run["status"] = "shifting"
            if "active_before" not in run:  # what a rollback makes active again
                run["active_before"] = state["active"]
            self._save(state)
            result = self.run_playbook("rollout.yml", self._release_vars(wanted), run_id=run_id)
            for host, custom in result.custom.items():
                before = custom.get("md_before") or {}
                if host not in run["before"]:
                    run["before"][host] = before if before.get("digest") else {}
                if custom.get("md_state") in ("switching", "updated") and host not in run["touched"]:
                    run["touched"] = sorted([*run["touched"], host])
            self._record_serving(state, result)
            if not result.ok:
                run["status"] = "failed"
                self._save(state)
                message = self._failure(f"rolling update of {self.model} version {wanted['version']}", result)
                restored = self._restore(state, run_id)
                raise RolloutFailed(
                    f"{message}. Rolled back: {', '.join(restored) or 'no host had switched'}; serving "
                    f"{self._serving(state)} on every host.",
                    result={"failed": result.problems(), "rolled_back": restored, "ansible": result.to_dict()},
                )
            self._verify_front(wanted)
            self._verify_grpc_front(wanted)
            run["status"] = "shifted"
            previous = state["active"]
            state["active"] = {**wanted, "run_id": run_id, "at": now()}
            return {"url": self.front_url, **self._grpc(self.front_grpc), "version": wanted["version"],
                    "digest": wanted["digest"], "hosts": sorted(result.stats), "updated": list(run["touched"]), "changed": result.changed,
                    "previous": (previous or {}).get("version"), "serial": self.config.serial,
                    "ansible": result.to_dict(),
                    "note": f"{len(run['touched'])} host(s) switched, batch size {self.config.serial}"}

    def _verify_front(self, wanted: dict[str, Any]) -> None:
        """The load balancer's front answers with the candidate's digest, several times in a row."""
        _answers_in_a_row(lambda: self.runtime.served_digest(self.front_url, self.model, timeout=5), wanted["digest"],
                          f"the load balancer {self.front_url}",
                          "deploy.ansible.load_balancer.front_url and the backend")

    def _verify_grpc_front(self, wanted: dict[str, Any]) -> None:
        """With ``serving.grpc``: the gRPC frontend answers new channels with the candidate's digest, 5 in a row."""
        if self.front_grpc is None:
            return
        from model_delivery.smoke import grpc_served_digest

        front = self.front_grpc
        _answers_in_a_row(lambda: grpc_served_digest(front, timeout=5), wanted["digest"],
                          f"the load balancer's gRPC frontend {front}",
                          "deploy.ansible.load_balancer.grpc_front and the gRPC backend")

    def _restore(self, state: dict[str, Any], run_id: str) -> list[str]:
        """rollback.yml on every host the run touched; returns them. Also stops the staging instance.

        ``run["unstaged"]`` tells whether a staging instance was stopped on the way.
        """
        run = state["runs"][run_id]
        restore: dict[str, Any] = {}
        for host in run["touched"]:
            before = run["before"].get(host) or {}
            restore[host] = (self._release_vars(before, check_signature=False)["model_delivery_release"]
                             if before.get("digest") else {})
        result = self.run_playbook("rollback.yml", {"model_delivery_restore": restore}, run_id=run_id)
        self._record_serving(state, result)
        if not result.ok:
            run["status"] = "rollback-failed"
            raise DeployFailed(self._failure(f"rollback of {self.model} on {sorted(restore)}", result)
                               + ". Fix the host(s), then clear the failed rollback task to retry it.")
        run["status"] = "rolled-back"
        run["restored"] = sorted(restore)
        run["unstaged"] = any(c.get("md_unstaged") for c in result.custom.values())
        if state["active"] and state["active"].get("run_id") == run_id:
            state["active"] = run.get("active_before")
        return sorted(restore)

    def retire(self, run_id: str) -> dict[str, Any]:
        """After promotion: stop the staging instance; prune artifacts but the serving and recent ones."""
        with self._locked() as state:
            run = state["runs"].get(run_id) or {}
            keep = sorted({d for d in [(run.get("candidate") or {}).get("digest"),
                                       *[(b or {}).get("digest") for b in (run.get("before") or {}).values()],
                                       *[h.get("digest") for h in state["hosts"].values()],
                                       *state["delivered"][-KEEP_ARTIFACTS:]] if d})
            result = self.run_playbook("retire.yml", {"model_delivery_keep": keep}, run_id=run_id)
            if not result.ok:
                raise DeployFailed(self._failure(f"retiring the staging instance of {self.model}", result))
            if run:
                run["status"] = "retired"
            staging = (run.get("staging") or {}).get("host")
            pruned = self._prune_cache(keep)
            return {"stopped": staging, "kept": keep, "changed": result.changed, "pruned_from_cache": pruned}

    def _prune_cache(self, keep: list[str]) -> list[str]:
        """Remove from the controller's cache (``<state_dir>/artifacts``) the fetched artifacts the hosts no longer
        keep, with their bundle, stamp and any partial fetch, once none of those was written for
        :data:`CACHE_GRACE_SECONDS`; return the digests removed."""
        cache = self.state_dir / "artifacts"
        if not cache.is_dir():
            return []
        kept = {parse_digest(digest) for digest in keep}
        groups: dict[str, list[Path]] = {}
        for path in cache.iterdir():
            found = _HEX64.search(path.name)
            if found and found.group() not in kept:
                groups.setdefault(found.group(), []).append(path)
        cutoff, removed = time.time() - CACHE_GRACE_SECONDS, []
        for hex_digest, paths in sorted(groups.items()):
            try:
                if max(path.lstat().st_mtime for path in paths) > cutoff:
                    continue
            except FileNotFoundError:
                continue
            for path in paths:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            removed.append(f"sha256:{hex_digest}")
        if removed:
            self.log("ansible: removed %d artifact(s) the hosts no longer keep from the controller's cache %s",
                     len(removed), cache)
        return removed

    def rollback(self, run_id: str) -> dict[str, Any]:
        """Put back what every host this run touched served before; stop its staging instance."""
        with self._locked() as state:
            run = state["runs"].get(run_id)
            if run is None:
                return {"action": "none", "serving": self._serving(state)}
            if run.get("status") == "rolled-back":
                return {"action": "rolled-back", "serving": self._serving(state), "hosts": run.get("restored", []),
                        "note": "already rolled back when the rolling update failed"}
            if not run["touched"]:
                self._restore(state, run_id)
                stopped = bool(run.get("staging")) or run["unstaged"]
                return {"action": "stopped-candidate" if stopped else "none", "serving": self._serving(state),
                        "hosts": []}
            restored = self._restore(state, run_id)
            return {"action": "rolled-back", "serving": self._serving(state), "hosts": restored}

    def status(self) -> dict[str, Any]:
        """What each host serves (as last reported), the active version and recent runs."""
        state = self._read()
        return {"front_url": self.front_url, "hosts": state["hosts"], "active": state["active"],
                "serving": self._serving(state), "runs": state["runs"]}


def _answers_in_a_row(probe: Any, digest: str, what: str, check: str, times: int = 5, seconds: float = 30) -> None:
    """``probe()`` (a served digest, or None) gives ``digest`` ``times`` times in a row within ``seconds``.

    :raises DeployFailed: naming ``what`` answered last and what to ``check``.
    """
    deadline = time.monotonic() + seconds
    in_a_row, last = 0, "no answer"
    while time.monotonic() < deadline:
        served = probe()
        last = f"digest {served}" if served else "no answer"
        good = served == digest
        in_a_row = in_a_row + 1 if good else 0
        if in_a_row >= times:
            return
        time.sleep(0.05 if good else 0.5)
    raise DeployFailed(f"{what} does not answer with {digest} after the rollout (last: {last}). Check {check}.")
