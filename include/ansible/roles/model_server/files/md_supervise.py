#!/usr/bin/env python3
"""Supervise one model-server instance on a host without systemd (standard library only).

An instance is described by ``<root>/<instance>.json`` (templated by the ``model_server``
role). Its supervisor keeps the serving runtime's server running (the ``command`` the deploy
target took from the runtime: ``python -m model_server`` or vLLM's OpenAI server), restarting
it after a crash with a growing back-off, but not after exit 3 (the artifact does not match
its digest) or 4 (unusable artifact): those would fail again. SIGTERM stops the server
gracefully, then the supervisor.

The command's placeholders are whole arguments (``{python}``, ``{artifact}``, ``{digest}``,
``{model}``, ``{version}``, ``{host}``, ``{port}``, ``{graceful_timeout}``), filled in from the
config: an argument is never split or pasted into. The ``env`` values may name ``{scratch}``
(``<root>/scratch``, the caches the model's instances share: vLLM keys them by content and writes
them atomically, so a staging server warms them for the live one) and ``{tmp}`` (a short
directory of the instance's own: vLLM binds Unix sockets there, whose paths hold at most 107 bytes).

    md_supervise.py start|stop|restart|status|run|wait-ready --root DIR --instance NAME
    md_supervise.py install-artifact --incoming DIR --dest DIR --digest sha256:...
        [--pull-blobs DIR --pull-folder DIR] [--signature BUNDLE (--public-key PEM | --ca PEM)]

``start`` runs ``run`` detached in its own session and returns; ``stop`` and ``restart``
print ``stopped`` only when something was running (the role's ``changed_when`` reads it);
``wait-ready`` waits until the server tells the truth about being ready, and fails early, with
the log's tail, when the server gave up. With ``ready: open-inference``: ``/v2/health/ready``
answers 200 with the expected ``X-Model-Digest``. With ``ready: openai`` (vLLM): ``/v1/models``
lists the model, served from the directory named after the expected digest, and a one-token
warm-up completion answers.
``install-artifact`` re-hashes a copied artifact against its manifest and the digest
(``model_server.manifest``, installed beside this file) and only then moves it into place.
With ``--pull-blobs`` and ``--pull-folder`` (the store, as this host mounts it) the host copies
the files itself (``model_server.transfer``), verifying each 64 MiB part as it is written and,
after an interruption, resuming at the parts that do not verify.
With ``--public-key`` (or ``--ca``, the certificate method) it also checks the artifact's
OpenSSF model-signing bundle (``--signature``; absent: refused as unsigned) on the host,
with ``model_signing`` from the host's virtualenv, the same way ``model_delivery.signing``
does on the controller (``MANIFEST.json`` not signed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

NO_RESTART_CODES = (3, 4)  # integrity failure, unusable artifact: a restart cannot help
MAX_BACKOFF = 10.0
PLACEHOLDERS = ("python", "artifact", "digest", "model", "version", "host", "port")
WARM_UP = {"prompt": "def", "max_tokens": 1, "temperature": 0}


class Instance:
    """Paths and process handling of one instance under ``root``."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.config_path = root / f"{name}.json"
        self.pidfile = root / "run" / f"{name}.pid"
        self.status_path = root / "run" / f"{name}.status.json"
        self.log_path = root / "logs" / f"{name}.log"

    def config(self) -> dict:
        return json.loads(self.config_path.read_text())

    def command(self, config: dict) -> list[str]:
        """The wrapper, the runtime's command with its placeholders filled in, then the extra arguments."""
        values = {f"{{{name}}}": str(config[name]) for name in PLACEHOLDERS}
        values["{graceful_timeout}"] = str(config.get("graceful_timeout", 30))
        argv = [values.get(arg, arg) for arg in config["command"]]  # the role always writes the runtime's command
        return [*config.get("wrapper", []), *argv, *config.get("extra_args", [])]

    def env(self, config: dict) -> dict[str, str]:
        """The server's environment: this one, the runtime's variables, and PYTHONPATH for the model server."""
        import hashlib
        import tempfile

        scratch = self.root / "scratch"
        key = hashlib.sha256(str(self.root / self.name).encode()).hexdigest()[:12]
        tmp = Path(tempfile.gettempdir()) / f"md-{key}"
        extra = {name: str(value).replace("{scratch}", str(scratch)).replace("{tmp}", str(tmp))
                 for name, value in (config.get("env") or {}).items()}
        for path in (scratch, tmp):
            if any(str(path) in value for value in extra.values()):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = self.token(config)
        return {**os.environ, **extra, "PYTHONPATH": config["pythonpath"],
                **({config["token_env"]: token} if token else {})}

    @staticmethod
    def token(config: dict) -> str | None:
        """The servers' bearer token (``token_file``, 0600, written by the role), or None without one."""
        path = config.get("token_file")
        return Path(path).read_text().strip() or None if path else None

    def write_status(self, **status: object) -> None:
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**status, "at": time.time()}))
        os.replace(tmp, self.status_path)

    def read_status(self) -> dict:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    def marker(self) -> list[str]:
        return ["md_supervise.py", "--root", str(self.root), "--instance", self.name]

    def pid(self) -> int | None:
        """The supervisor's pid if it runs (its command line is checked: a reused pid is never signalled)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        args = [part.decode(errors="replace") for part in cmdline]
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return None
        joined = " ".join(args)
        if all(part in joined for part in self.marker()) and "run" in args:
            return pid
        return None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _run(instance: Instance) -> int:
    """Foreground: keep the server running until SIGTERM."""
    config = instance.config()
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = instance.env(config)
    backoff, restarts = 1.0, 0
    instance.log_path.parent.mkdir(parents=True, exist_ok=True)
    instance.pidfile.parent.mkdir(parents=True, exist_ok=True)
    instance.pidfile.write_text(f"{os.getpid()}\n")  # also when systemd started it: wait-ready and stop read it
    while not stopping:
        with open(instance.log_path, "ab") as log:
            child = subprocess.Popen(instance.command(config), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env)
        instance.write_status(state="running", child=child.pid, restarts=restarts, digest=config["digest"])
        started = time.monotonic()
        while True:
            try:
                code = child.wait(timeout=float(config.get("graceful_timeout", 30)) + 10 if stopping else None)
                break
            except subprocess.TimeoutExpired:
                child.kill()
        if stopping:
            instance.write_status(state="stopped", code=code, digest=config["digest"])
            return 0
        if code in NO_RESTART_CODES:
            instance.write_status(state="refused", code=code, digest=config["digest"])
            return code
        instance.write_status(state="restarting", code=code, restarts=restarts + 1, digest=config["digest"])
        if time.monotonic() - started > 60:
            backoff = 1.0
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        backoff, restarts = min(backoff * 2, MAX_BACKOFF), restarts + 1
    return 0


def _start(instance: Instance) -> str:
    if instance.pid() is not None:
        return "already running"
    instance.pidfile.parent.mkdir(parents=True, exist_ok=True)
    instance.log_path.parent.mkdir(parents=True, exist_ok=True)
    instance.write_status(state="starting")
    with open(instance.log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "run", "--root", str(instance.root),
             "--instance", instance.name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    tmp = instance.pidfile.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    os.replace(tmp, instance.pidfile)
    return "started"


def _stop(instance: Instance) -> str:
    pid = instance.pid()
    if pid is None:
        return "not running"
    graceful = float(instance.config().get("graceful_timeout", 30)) if instance.config_path.exists() else 30.0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + graceful + 15
    while time.monotonic() < deadline and instance.pid() is not None:
        time.sleep(0.1)
    if instance.pid() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        instance.pidfile.unlink()
    return "stopped"


def _probe(url: str) -> tuple[int, str | None]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a URL we build
            return int(response.status), response.headers.get("X-Model-Digest")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers.get("X-Model-Digest") if exc.headers else None
    except (OSError, ValueError):
        return 0, None


def _probe_openai(base: str, model: str, digest: str, token: str | None = None) -> tuple[int, str | None]:
    """``/v1/models``: (status, the digest ``model`` is served from); then, when that is ``digest``, a warm-up
    completion, whose failure reads as HTTP 0 from it (the server lists the model but cannot answer yet).
    With ``token``, both send it (vLLM with an API key guards ``/v1/*``)."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        models = urllib.request.Request(f"{base}/v1/models", headers=auth)
        with urllib.request.urlopen(models, timeout=2) as response:  # noqa: S310 - a URL we build
            entries = json.loads(response.read()).get("data") or []
    except urllib.error.HTTPError as exc:
        return int(exc.code), None
    except (OSError, ValueError):
        return 0, None
    served = next((f"sha256:{Path(str(e['root'])).name}" for e in entries if e.get("id") == model and e.get("root")),
                  None)
    if served != digest:
        return 200, served
    request = urllib.request.Request(f"{base}/v1/completions", data=json.dumps({"model": model, **WARM_UP}).encode(),
                                     headers={"Content-Type": "application/json", **auth}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - a URL we build
            answered = bool(json.loads(response.read()).get("choices"))
    except (OSError, ValueError):
        answered = False
    return (200, served) if answered else (0, served)


def _wait_ready(instance: Instance, timeout: float, health_host: str) -> int:
    config = instance.config()
    base = f"http://{health_host}:{config['port']}"
    openai = config.get("ready") == "openai"
    url = f"{base}/v1/models" if openai else f"{base}/v2/health/ready"
    deadline = time.monotonic() + timeout
    last: tuple[int, str | None] = (0, None)
    while time.monotonic() < deadline:
        status = instance.read_status()
        if status.get("state") == "refused":
            what = "its artifact does not match the digest" if status.get("code") == 3 else "the artifact is unusable"
            print(f"model server {instance.name} on port {config['port']} refused to start (exit "
                  f"{status.get('code')}): {what}.\n{instance.tail()}", file=sys.stderr)
            return 1
        if instance.pid() is None:
            print(f"the supervisor of {instance.name} is not running.\n{instance.tail()}", file=sys.stderr)
            return 1
        last = (_probe_openai(base, config["model"], config["digest"], instance.token(config)) if openai
                else _probe(url))
        if last[0] == 200 and last[1] == config["digest"]:
            print(json.dumps({"ready": True, "url": url, "digest": config["digest"]}))
            return 0
        time.sleep(0.25)
    seen = f"last answer: HTTP {last[0]}" + (f" from digest {last[1]}" if last[1] else "") if last[0] else "no answer"
    if openai and last[1] == config["digest"]:
        seen = "it lists the model from this digest, but the warm-up completion did not answer"
    print(f"model server {instance.name} (version {config['version']}, {config['digest']}) was not ready on "
          f"{url} within {timeout:g} s ({seen}). Log tail:\n{instance.tail()}", file=sys.stderr)
    return 1


def _check_signature(directory: Path, signature: Path | None, public_key: Path | None, ca: Path | None) -> str | None:
    """Why ``directory`` does not match its model-signing bundle (None when it does): ``model_server.signature``."""
    if signature is None or not signature.is_file():
        return "unsigned: signing is required and no signature came with the artifact"
    from model_server.signature import problem

    try:
        return problem(directory, signature, public_key, ca, who="this host")
    except ImportError:
        return ("model-signing is not installed in this host's verifier virtualenv. Fix: set signing in the spec "
                "so that the role installs it (include/serving/signing-requirements.txt)")


def _pull(incoming: Path, blobs: Path, folder: Path, digest: str) -> tuple[dict, int]:
    """Fill ``incoming`` from the store this host mounts: the manifest from the artifact's ``folder``, each
    file from its blob (else, legacy layout, from beside the manifest), copied part by part with every part
    verified as it is written. A copy left by a killed run is resumed at the parts that do not verify.

    :return: the manifest (checked against ``digest``) and the bytes copied (not those a killed run left).
    :raises ArtifactIntegrityError: the manifest or a part of a file does not match.
    """
    from model_server.manifest import (
        MANIFEST_NAME,
        ArtifactIntegrityError,
        manifest_digest,
        parse_manifest,
        walk_extra,
    )
    from model_server.transfer import Progress, copy_verified

    raw = (folder / MANIFEST_NAME).read_bytes()  # OSError: the store is not mounted here
    try:
        manifest = parse_manifest(json.loads(raw))
    except ValueError as exc:
        raise ArtifactIntegrityError(f"cannot read the manifest in {folder}: {exc}") from None
    if manifest_digest(manifest) != digest:
        raise ArtifactIntegrityError(f"{folder / MANIFEST_NAME} hashes to {manifest_digest(manifest)}, not {digest}")
    incoming.mkdir(parents=True, exist_ok=True)
    total = sum(int(entry["size"]) for entry in manifest["files"])
    progress = Progress(f"pull {digest[:19]}", total, lambda fmt, *a: print(fmt % a, file=sys.stderr, flush=True))
    pulled = 0
    for entry in manifest["files"]:
        src = blobs / entry["sha256"]
        if not src.is_file():
            src = folder / entry["path"]
        pulled += copy_verified(src, incoming / entry["path"], entry, manifest.get("chunk_size"), done=progress)
    progress.finish()
    (incoming / MANIFEST_NAME).write_bytes(raw)
    extra = list(walk_extra(incoming, manifest))
    if extra:
        raise ArtifactIntegrityError(f"{incoming} holds files the manifest does not list: {extra[:5]}")
    return manifest, pulled


def _install_artifact(incoming: Path, dest: Path, digest: str, signature: Path | None = None,
                      public_key: Path | None = None, ca: Path | None = None,
                      pull: tuple[Path, Path] | None = None) -> int:
    """Verify ``incoming`` (every file's sha256 and size, the manifest's digest, and its signature when asked),
    then rename it to ``dest``. With ``pull`` (the store's blobs and the artifact's folder, as this host mounts
    them), ``incoming`` is first filled from the store, verified part by part as it is written."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from model_server.manifest import ArtifactIntegrityError, verify_directory

    try:
        if pull is not None:
            manifest, pulled = _pull(incoming, pull[0], pull[1], digest)  # every part verified as written
        else:
            manifest, pulled = verify_directory(incoming, digest), None
    except ArtifactIntegrityError as exc:
        shutil.rmtree(incoming, ignore_errors=True)
        print(f"refusing the copy of {digest}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if pull is None:
            raise
        # the store is not mounted here, or a file is missing: nothing to refuse; what was pulled is kept
        print(f"cannot pull {digest} from the store: {exc}. Fix: mount the artifact store on this host at "
              "deploy.ansible.store_path_on_hosts, or use artifact_transfer: push.", file=sys.stderr)
        return 2
    refused = _check_signature(incoming, signature, public_key, ca) if (public_key or ca) else None
    if refused:
        shutil.rmtree(incoming, ignore_errors=True)
        print(f"refusing the copy of {digest}: signature {refused}. Fix: deploy an artifact signed by the "
              "release's key (run the release again with signing configured).", file=sys.stderr)
        return 1
    shutil.rmtree(dest, ignore_errors=True)  # a partial copy from an interrupted run
    os.replace(incoming, dest)
    marker = dest.parent / f"{dest.name}.verified"
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(digest + "\n")
    os.replace(tmp, marker)
    report = {"verified": digest, "files": len(manifest["files"]), "path": str(dest)}
    print(json.dumps(report if pulled is None else {**report, "pulled_bytes": pulled}))
    return 0


def _install_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not (args.incoming and args.dest and args.digest):
        parser.error("install-artifact needs --incoming, --dest and --digest")
    if (args.pull_blobs is None) != (args.pull_folder is None):
        parser.error("install-artifact: --pull-blobs and --pull-folder go together")
    pull = (args.pull_blobs, args.pull_folder) if args.pull_blobs else None
    return _install_artifact(args.incoming, args.dest, args.digest, args.signature, args.public_key, args.ca, pull)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("start", "stop", "restart", "status", "run", "wait-ready",
                                            "install-artifact"))
    parser.add_argument("--root", type=Path)
    parser.add_argument("--instance")
    parser.add_argument("--incoming", type=Path, help="install-artifact: the copied directory")
    parser.add_argument("--dest", type=Path, help="install-artifact: where it goes once verified")
    parser.add_argument("--digest", help="install-artifact: sha256:<hex>")
    parser.add_argument("--signature", type=Path, help="install-artifact: the artifact's model-signing bundle")
    parser.add_argument("--public-key", type=Path, help="install-artifact: verify the signature with this EC key (PEM)")
    parser.add_argument("--ca", type=Path, help="install-artifact: verify the signing certificate against these CAs")
    parser.add_argument("--pull-blobs", type=Path, help="install-artifact: pull the files from these store blobs")
    parser.add_argument("--pull-folder", type=Path, help="install-artifact: the artifact's folder in the store")
    parser.add_argument("--timeout", type=float, default=120.0, help="wait-ready: seconds")
    parser.add_argument("--health-host", default="127.0.0.1", help="wait-ready: address to probe")
    args = parser.parse_args(argv)
    if args.command == "install-artifact":
        return _install_command(parser, args)
    if args.root is None or not args.instance:
        parser.error(f"{args.command} needs --root and --instance")
    instance = Instance(args.root.resolve(), args.instance)
    if args.command == "run":
        return _run(instance)
    if args.command == "start":
        print(_start(instance))
    elif args.command == "stop":
        print(_stop(instance))
    elif args.command == "restart":
        print(_stop(instance))
        print(_start(instance))
    elif args.command == "status":
        pid = instance.pid()
        print(json.dumps({"running": pid is not None, "pid": pid, **instance.read_status()}))
        return 0 if pid is not None else 3
    elif args.command == "wait-ready":
        return _wait_ready(instance, args.timeout, args.health_host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
