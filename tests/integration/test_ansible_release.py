"""The ansible target for real: dag.test() releases rolled out by ansible-playbook to three
model-server hosts behind a real HAProxy, with a load generator running through HAProxy.

Each host is a network namespace of its own with a real OpenSSH server
(tests/helpers/ansible_fleet.py): Ansible logs in over SSH with the user, private key and
host keys of an Airflow connection. The hosts share this machine's filesystem, so they share
one virtualenv, installed by the role for the first host. The tests share one fleet and run
in order: the first release puts version 1 on every host, later ones roll over it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.ansible_fleet import (
    HAProxy,
    Host,
    LoadGenerator,
    SshFleet,
    ensure_debian_packages,
    golden_request,
    host_files,
    served_digests,
    stop_fleet,
)
from tests.helpers.models import edit_spec
from tests.helpers.release import (
    environ,
    kill_release_when,
    load_record,
    mark_failed,
    release_env,
    rolled_back_record,
    run_release,
    task_states,
)

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"
SSH_CONN_ID = "md_fleet_ssh"
FAULT_HELPER = Path(__file__).resolve().parents[1] / "helpers" / "ansible_fault.py"


@dataclass
class Fleet:
    base: Path
    models: Path
    ssh: SshFleet
    lb: HAProxy
    wheels: Path

    @property
    def hosts(self) -> list[Host]:
        return self.ssh.hosts

    @property
    def model_dir(self) -> Path:
        return self.models / MODEL

    def inventory(self) -> dict[str, Any]:
        return self.ssh.inventory(self.wheels, self.base / "hosts" / "venv")

    def write_inventory(self) -> None:
        (self.model_dir / "inventory.yml").write_text(yaml.safe_dump(self.inventory(), sort_keys=False))

    def set_ansible(self, **changes: Any) -> None:
        edit_spec(self.model_dir, lambda spec: spec["deploy"]["ansible"].update(changes))

    def load(self) -> LoadGenerator:
        return LoadGenerator(self.lb.front_url, MODEL, golden_request(self.model_dir))

    def front_digest(self) -> str | None:
        response = httpx.post(f"{self.lb.front_url}/v2/models/{MODEL}/infer", json=golden_request(self.model_dir),
                              timeout=10)
        assert response.status_code == 200, response.text
        return response.headers["x-model-digest"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path, haproxy_installed: None, wheels: Path):
    base = tmp_path_factory.mktemp("ansible")
    ssh = SshFleet(base, 3)
    with release_env(base, (MODEL,)) as models:
        try:
            hosts = ssh.start()
            lb = HAProxy(base, hosts, MODEL).start()
            try:  # the key, user and host keys come from a connection
                with environ({f"AIRFLOW_CONN_{SSH_CONN_ID.upper()}": json.dumps(ssh.connection())}):
                    fleet = Fleet(base, models, ssh, lb, wheels)
                    fleet.write_inventory()
                    edit_spec(fleet.model_dir, lambda spec: spec["deploy"].update(target="ansible", ansible={
                        "inventory": "inventory.yml",
                        "ssh_conn_id": SSH_CONN_ID,
                        "serial": 1,
                        "max_fail_percentage": 0,
                        "load_balancer": {"runtime_api": str(lb.socket), "front_url": lb.front_url},
                        "ready_timeout_seconds": 90,
                        "drain_timeout_seconds": 10,
                    }))
                    yield fleet
            finally:
                lb.stop()
        finally:
            stop_fleet(base)
            ssh.stop()


def production():
    from model_delivery.registry import PRODUCTION, Registry
    from model_delivery.settings import get_settings

    return Registry(get_settings().tracking_uri).alias(MODEL, PRODUCTION)


def new_version(fleet: Fleet, c: float) -> None:
    """A different model, so a new version."""
    edit_spec(fleet.model_dir, lambda spec: spec["build"]["params"].update(C=c))


def test_first_release_delivers_to_every_host_behind_haproxy(fleet: Fleet) -> None:
    dag_run = run_release(MODEL, {"reason": "first ansible release"})

    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert states.pop("rollback") == "skipped"
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "released", record["reasons"]
    digest = record["artifact"]["digest"]
    staging = record["stages"]["deploy_staging"]["result"]
    assert staging["target"] == "ansible" and staging["staging_host"] == "host1"
    assert staging["url"] == fleet.hosts[0].staging_url  # the host's own address, in its namespace
    shift = record["stages"]["deploy_production"]["result"]
    assert shift["url"] == fleet.lb.front_url
    assert shift["updated"] == ["host1", "host2", "host3"]
    assert record["stages"]["retire"]["result"]["stopped"] == "host1"
    assert served_digests(fleet.hosts) == {h.name: digest for h in fleet.hosts}
    assert fleet.lb.statuses() == {h.name: "UP" for h in fleet.hosts}
    assert fleet.front_digest() == digest
    # The staging instance is gone, and each host holds the artifact it serves, verified.
    for host in fleet.hosts:
        assert not (host.root / "staging.json").exists()
        live = json.loads((host.root / "live.json").read_text())
        assert live["digest"] == digest and live["port"] == host.port
        assert (host.root / "artifacts" / (digest.removeprefix("sha256:") + ".verified")).read_text().strip() == digest


def test_new_version_rolls_out_host_by_host_with_no_failed_request(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_delivery.deploy.ansible import target

    before = production()
    new_version(fleet, 0.5)
    # The model file counts as large here: it is copied on its own, the rest arrives in the one archive.
    monkeypatch.setattr(target, "BUNDLE_FILE_MAX", 64)

    with fleet.load() as load:
        dag_run = run_release(MODEL, {"reason": "rolling update under load", "force": True})

    assert dag_run.state == "success", task_states(dag_run)
    record = load_record(MODEL, dag_run.run_id)
    digest = record["artifact"]["digest"]
    assert digest != before.digest
    assert load.report.total > 0
    assert load.report.failed == 0, f"{load.report.line()}: {dict(load.report.errors)}"
    assert load.report.digests[before.digest] > 0  # the old version served while the rollout ran
    shift = record["stages"]["deploy_production"]["result"]
    assert shift["updated"] == ["host1", "host2", "host3"] and shift["previous"] == before.version
    assert served_digests(fleet.hosts) == {h.name: digest for h in fleet.hosts}
    assert fleet.lb.statuses() == {h.name: "UP" for h in fleet.hosts}
    assert fleet.front_digest() == digest


def test_rerunning_the_same_release_reports_changed_0(fleet: Fleet) -> None:
    before = production()
    files = host_files(fleet.hosts)

    dag_run = run_release(MODEL, {"reason": "same release again", "force": True})

    assert dag_run.state == "success", task_states(dag_run)
    record = load_record(MODEL, dag_run.run_id)
    assert record["artifact"]["digest"] == before.digest
    staging = record["stages"]["deploy_staging"]["result"]
    assert staging["changed"] == 0 and staging["staging_host"] is None
    assert "already serves" in staging["note"]
    shift = record["stages"]["deploy_production"]["result"]
    assert shift["changed"] == 0 and shift["updated"] == []
    assert record["stages"]["retire"]["result"]["changed"] == 0
    assert host_files(fleet.hosts) == files
    assert served_digests(fleet.hosts) == {h.name: before.digest for h in fleet.hosts}


def test_a_host_that_never_gets_ready_rolls_every_host_back(fleet: Fleet) -> None:
    before = production()
    # host2's servers go through the fault wrapper: only the digest serving now can start.
    fault = fleet.base / "host2-fault.json"
    fault.write_text(json.dumps({"healthy_digests": [before.digest]}))
    fleet.hosts[1].vars["model_server_wrapper"] = [sys.executable, str(FAULT_HELPER), "--fault-file", str(fault), "--"]
    fleet.write_inventory()
    fleet.set_ansible(ready_timeout_seconds=20)
    new_version(fleet, 0.25)
    try:
        with fleet.load() as load:
            dag_run = run_release(MODEL, {"reason": "host2 is broken", "force": True})
    finally:
        fleet.set_ansible(ready_timeout_seconds=90)
        del fleet.hosts[1].vars["model_server_wrapper"]  # host2 is mended for the tests after this one
        fleet.write_inventory()

    record = rolled_back_record(dag_run, "deploy_production", "verify")
    reason = next(r for r in record["reasons"] if r.startswith("deploy_production:"))
    assert "host2" in reason and "was not ready" in reason and "Rolled back: host1, host2" in reason, reason
    failed = record["stages"]["deploy_production"]
    assert failed["error_type"] == "RolloutFailed" and failed["try"] == 1
    assert failed["result"]["rolled_back"] == ["host1", "host2"]
    assert record["stages"]["rollback"]["result"]["action"] == "rolled-back"
    assert record["stages"]["rollback"]["result"]["serving"] == before.version
    # Never half-deployed: every host serves the previous version, host3 was never touched.
    assert served_digests(fleet.hosts) == {h.name: before.digest for h in fleet.hosts}
    assert fleet.lb.statuses() == {h.name: "UP" for h in fleet.hosts}
    assert load.report.total > 0
    assert load.report.failed == 0, f"{load.report.line()}: {dict(load.report.errors)}"
    assert fleet.front_digest() == before.digest
    assert production().version == before.version


def test_a_dry_run_release_reports_per_host_changes_and_changes_nothing(fleet: Fleet) -> None:
    from model_delivery.settings import get_settings

    before = production()
    new_version(fleet, 0.1)  # a candidate the hosts have never seen
    files, statuses = host_files(fleet.hosts), fleet.lb.statuses()
    ledger = get_settings().open_ledger()
    state = ledger.state(MODEL, "ansible")

    dag_run = run_release(MODEL, {"reason": "what would the fleet change?", "dry_run": True})

    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert states["gate"] == "success" and states["deploy_staging"] == "skipped", states
    assert states["deploy_production"] == states["rollback"] == states["promote"] == "skipped", states
    record = load_record(MODEL, dag_run.run_id)
    assert record["outcome"] == "dry-run", record["reasons"]
    plan = record["stages"]["deploy_staging"]["result"]
    assert plan["dry_run"] is True and plan["target"] == "ansible" and plan["digest"] != before.digest
    assert plan["ansible"]["check"] is True
    assert set(plan["would_change"]) == {"host1", "host2", "host3"}
    assert all(count > 0 for count in plan["would_change"].values()), plan
    assert "check mode on 3 host(s)" in record["reasons"][0] and "nothing was changed" in record["reasons"][0]
    # Nothing changed: files on every host, HAProxy, what serves, the deploy state, the registry.
    assert host_files(fleet.hosts) == files
    assert fleet.lb.statuses() == statuses
    assert served_digests(fleet.hosts) == {h.name: before.digest for h in fleet.hosts}
    assert ledger.state(MODEL, "ansible") == state
    assert production().version == before.version


def test_a_release_killed_mid_rollout_and_marked_failed_is_settled_by_the_next(fleet: Fleet, tmp_path: Path) -> None:
    """The whole release process is killed (-9) while ansible-playbook rolls out (host1 switched, host2
    starting); its playbook runs on as an orphan, and the fleet serves two versions. The run is marked
    failed (as in the UI). The next release takes the lease over: it stops the orphan, removes its
    private files, puts every host back, then releases; HAProxy, the hosts, the registry and the
    ledger agree, and no ansible-playbook survives."""
    import psutil

    from model_delivery.settings import get_settings

    before = production()
    ledger = get_settings().open_ledger()
    known = {e["id"] for e in ledger.journal(MODEL, target="ansible")}
    new_version(fleet, 0.75)
    orphans: list[dict[str, Any]] = []

    def host1_switched() -> str | None:
        rolling = [e for e in ledger.pending(MODEL, "ansible") if e["id"] not in known
                   and e["detail"]["playbook"] == "rollout.yml" and e["detail"].get("pid")]
        if rolling and served_digests(fleet.hosts[:1]) not in ({"host1": before.digest}, {"host1": None}):
            orphans.append(rolling[0])
            return str(rolling[0]["run_id"])
        return None

    killed_run = kill_release_when(MODEL, {"reason": "killed mid-rollout", "force": True}, tmp_path / "killed.log",
                                   host1_switched)
    orphan = orphans[0]
    mark_failed(killed_run)

    dag_run = run_release(MODEL, {"reason": "after the killed release", "force": True})

    assert dag_run.state == "success", task_states(dag_run)
    record = load_record(MODEL, dag_run.run_id)
    settled = record["stages"]["deploy_staging"]["result"]["took_over"]
    assert settled["run_id"] == killed_run and settled["finished"] == "rollback", settled
    pid = orphan["detail"]["pid"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, \
        "the orphaned ansible-playbook still runs"
    entry = next(e for e in ledger.journal(MODEL, target="ansible") if e["id"] == orphan["id"])
    assert entry["status"] == "undone" and "counts as touched" in entry["note"], entry
    left = [Path(d) for d in orphan["detail"]["private_dirs"] if Path(d).exists()]
    assert not left, f"the killed playbook's private files (secrets) were left: {left}"
    now = production()
    assert now.version != before.version
    assert served_digests(fleet.hosts) == {h.name: now.digest for h in fleet.hosts}
    assert fleet.lb.statuses() == {h.name: "UP" for h in fleet.hosts}
    assert fleet.front_digest() == now.digest
    state = ledger.state(MODEL, "ansible")
    assert state["active"]["digest"] == now.digest and state["active"]["run_id"] == dag_run.run_id
    assert {h["digest"] for h in state["hosts"].values()} == {now.digest}
    assert ledger.pending(MODEL, "ansible") == [] and ledger.holder(MODEL) is None


def _target(fleet: Fleet, lines: list[str]):
    from model_delivery.deploy.ansible.target import AnsibleTarget
    from model_delivery.settings import get_settings
    from model_delivery.spec import load_spec
    from model_delivery.store import ArtifactStore

    settings = get_settings()
    return AnsibleTarget(load_spec(fleet.model_dir), settings, ArtifactStore(settings.artifact_root),
                         log=lambda fmt, *a: lines.append(fmt % a))


def test_secrets_from_connections_stay_out_of_logs_and_state(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_delivery.settings import get_settings

    key_lines = [line for line in fleet.ssh.key.read_text().splitlines() if "-----" not in line]
    # The inventory from a connection too; the SSH key, user and host keys already come from one.
    monkeypatch.setenv("AIRFLOW_CONN_MD_FLEET_INVENTORY", json.dumps(
        {"conn_type": "generic", "extra": {"inventory": fleet.inventory()}}))
    edit_spec(fleet.model_dir, lambda spec: spec["deploy"]["ansible"].update(
        inventory=None, inventory_conn_id="md_fleet_inventory"))
    try:
        lines: list[str] = []
        result = _target(fleet, lines).run_playbook("retire.yml", {})
    finally:
        edit_spec(fleet.model_dir, lambda spec: spec["deploy"]["ansible"].update(
            inventory="inventory.yml", inventory_conn_id=None))

    assert result.ok, lines[-30:]
    assert sorted(result.stats) == ["host1", "host2", "host3"]
    log = "\n".join(lines)
    assert not any(line in log for line in key_lines) and "PRIVATE KEY" not in log
    deploy_dir = get_settings().deploy_dir / MODEL
    assert not list((deploy_dir / "tmp").iterdir()), "the private temporary files were not removed"
    for path in deploy_dir.glob("*.json"):
        assert not any(line in path.read_text() for line in key_lines)
    ledger = get_settings().open_ledger()
    recorded = json.dumps([ledger.state(MODEL, "ansible"), ledger.journal(MODEL)])
    assert not any(line in recorded for line in key_lines)


def test_a_host_whose_key_is_not_known_is_refused_and_nothing_changes(fleet: Fleet,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = production()
    files = host_files(fleet.hosts)
    connection = fleet.ssh.connection()
    known = connection["extra"]["known_hosts"]
    impostor = known[0].split()[:1] + known[2].split()[1:]  # host1's address with host3's key
    connection["extra"]["known_hosts"] = [" ".join(impostor), *known[1:]]
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN_ID.upper()}", json.dumps(connection))

    lines: list[str] = []
    result = _target(fleet, lines).run_playbook("retire.yml", {})

    assert not result.ok
    problems = result.problems()
    assert any(p.startswith("host1:") and "Host key verification failed" in p for p in problems), problems
    assert not any(p.startswith(("host2:", "host3:")) for p in problems), problems
    assert host_files(fleet.hosts) == files
    assert served_digests(fleet.hosts) == {h.name: before.digest for h in fleet.hosts}


DEPLOY_USER = "md-deploy"


@pytest.fixture
def deploy_user(fleet: Fleet) -> Any:
    """A login user with a password (for sudo) and the fleet's key; removed afterwards."""
    import secrets

    ensure_debian_packages({"sudo": "sudo", "useradd": "passwd"})
    password = secrets.token_urlsafe(16)
    if subprocess.run(["id", DEPLOY_USER], capture_output=True).returncode == 0:  # left over from a killed run
        _remove_user(DEPLOY_USER)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", DEPLOY_USER], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{DEPLOY_USER}:{password}\n", text=True, check=True, capture_output=True)
    ssh_dir = Path(f"/home/{DEPLOY_USER}/.ssh")
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(fleet.ssh.key.with_suffix(".pub").read_text())
    subprocess.run(["chown", "-R", f"{DEPLOY_USER}:{DEPLOY_USER}", str(ssh_dir)], check=True)
    sudoers = Path(f"/etc/sudoers.d/{DEPLOY_USER}")
    sudoers.write_text(f"{DEPLOY_USER} ALL=(ALL) ALL\n")  # sudo asks for the user's password
    sudoers.chmod(0o440)
    try:
        yield DEPLOY_USER, password
    finally:
        sudoers.unlink(missing_ok=True)
        _remove_user(DEPLOY_USER)


def _remove_user(name: str) -> None:
    """userdel refuses a user with running processes (its SSH sessions in the namespaces): end them first."""
    import psutil

    procs = [p for p in psutil.process_iter(["username"]) if p.info["username"] == name]
    for proc in procs:
        proc.kill()
    psutil.wait_procs(procs, timeout=10)
    removed = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
    assert removed.returncode in (0, 12), removed.stderr  # 12: only the home or mail spool was already gone


def test_become_uses_the_password_of_a_connection_and_never_logs_it(fleet: Fleet, deploy_user: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    user, password = deploy_user
    connection = fleet.ssh.connection()
    connection["login"] = user  # log in as an unprivileged user, become root with sudo
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN_ID.upper()}", json.dumps(connection))
    edit_spec(fleet.model_dir, lambda spec: spec["deploy"]["ansible"].update(become_conn_id="md_fleet_become"))
    try:
        lines: list[str] = []
        monkeypatch.setenv("AIRFLOW_CONN_MD_FLEET_BECOME", json.dumps({"conn_type": "generic", "password": password}))
        accepted = _target(fleet, lines).run_playbook("retire.yml", {})
        wrong: list[str] = []
        monkeypatch.setenv("AIRFLOW_CONN_MD_FLEET_BECOME", json.dumps({"conn_type": "generic", "password": "nope"}))
        refused = _target(fleet, wrong).run_playbook("retire.yml", {})
    finally:
        edit_spec(fleet.model_dir, lambda spec: spec["deploy"]["ansible"].update(become_conn_id=None))

    assert accepted.ok, lines[-30:]
    assert sorted(accepted.stats) == ["host1", "host2", "host3"]
    assert password not in "\n".join(lines + wrong)
    sshd_log = "".join((fleet.ssh.dir / h.name / "sshd.log").read_text() for h in fleet.hosts)
    assert f"Accepted publickey for {user}" in sshd_log
    assert not refused.ok
    problems = " | ".join(refused.problems())
    assert all(f"{h.name}:" in problems for h in fleet.hosts), problems
    assert "sudo password" in problems.lower() or "incorrect" in problems.lower(), problems


def _signed_variant(store: Any, source: str, tmp_path: Path, name: str, private_pem: bytes) -> tuple[str, bytes]:
    """A new artifact (the production one plus a file), stored, and its bundle signed by ``private_pem``."""
    from model_delivery.signing import sign_directory
    from model_server.manifest import MANIFEST_NAME

    directory = store.fetch(MODEL, source, tmp_path / name)
    (directory / MANIFEST_NAME).unlink()
    (directory / "NOTICE").write_text(f"{name}\n")
    digest = store.put_directory(MODEL, directory).digest
    bundle = sign_directory(directory, private_pem)
    store.write_text(store.layout.signature(MODEL, digest), bundle.decode())
    return digest, bundle


def test_pulling_hosts_verify_the_signature_themselves_before_anything_serves(fleet: Fleet, tmp_path: Path) -> None:
    """artifact_transfer: pull with signing required and a serving token: each host copies the artifact from the
    store it mounts and checks its model-signing bundle with the verifier the role installs; the staged server
    requires the token (kept 0600 on the host, masked in the log); a bundle of another key is refused by every
    host (the controller does not fetch pulled artifacts), and what serves stays as it was."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from model_delivery.deploy import Candidate
    from model_delivery.exceptions import DeployFailed

    def pems() -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
                key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))

    before = production()
    ours, theirs = pems(), pems()
    store = _target(fleet, []).store
    good, bundle = _signed_variant(store, before.digest, tmp_path, "signed-by-ours", ours[0])
    forged, _ = _signed_variant(store, before.digest, tmp_path, "signed-by-theirs", theirs[0])
    (fleet.model_dir / "signing.pub").write_bytes(ours[1])
    edit_spec(fleet.model_dir, lambda spec: spec.update(signing={"mode": "required", "public_key": "signing.pub"},
                                                        serving={"token_conn_id": "md_fleet_serving_token"}))
    fleet.set_ansible(artifact_transfer="pull")
    token = "fleet-" + os.urandom(16).hex()
    try:
        lines: list[str] = []
        with environ({"AIRFLOW_CONN_MD_FLEET_SERVING_TOKEN": json.dumps({"conn_type": "generic", "password": token})}):
            target = _target(fleet, lines)
            staged = target.stage(Candidate(MODEL, "90", good), "pull-signed")
            ready = httpx.get(f"{staged['url']}/v2/health/ready", timeout=10)  # health needs no token
            request = {"json": golden_request(fleet.model_dir), "timeout": 10}
            infer = f"{staged['url']}/v2/models/{MODEL}/infer"
            without = httpx.post(infer, **request)
            with_token = httpx.post(infer, headers={"Authorization": f"Bearer {token}"}, **request)
            target.rollback("pull-signed")  # stops the staging instance; no host switched

            refused: list[str] = []
            with pytest.raises(DeployFailed) as failed:
                _target(fleet, refused).stage(Candidate(MODEL, "91", forged), "pull-forged")
            _target(fleet, []).rollback("pull-forged")
    finally:
        edit_spec(fleet.model_dir, lambda spec: (spec.update(signing={"mode": "off"}), spec.pop("serving", None)))
        fleet.set_ansible(artifact_transfer="push")

    good_hex, forged_hex = good.removeprefix("sha256:"), forged.removeprefix("sha256:")
    assert ready.status_code == 200 and ready.headers["x-model-digest"] == good
    assert without.status_code == 401 and with_token.status_code == 200, (without.text, with_token.text)
    staging_host = fleet.hosts[0]
    token_file = staging_host.root / "run" / "token"
    assert token_file.read_text().strip() == token and (token_file.stat().st_mode & 0o077) == 0
    assert all(token not in line for line in lines)  # masked in the streamed playbook output
    assert not (target.state_dir / "artifacts" / good_hex).exists()  # pulled by the hosts, not copied from here
    for host in fleet.hosts:
        artifacts = host.root / "artifacts"
        assert (artifacts / f"{good_hex}.verified").read_text().strip() == good
        assert (artifacts / f"{good_hex}.sig").read_bytes() == bundle  # what the host checked
        assert not (artifacts / forged_hex).exists() and not (artifacts / f"{forged_hex}.incoming").exists()
    assert (fleet.base / "hosts" / "signing-venv" / ".installed").is_file()
    message = str(failed.value)
    assert all(f"{h.name}:" in message for h in fleet.hosts), message
    assert "signature wrong-key" in message, message
    assert served_digests(fleet.hosts) == {h.name: before.digest for h in fleet.hosts}
    assert fleet.front_digest() == before.digest
