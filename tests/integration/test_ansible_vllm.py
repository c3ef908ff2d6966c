"""vLLM on the Ansible target, for real: the model_server role installs and runs the vLLM runtime on
two hosts behind a real HAProxy, and rolls a language model over them with no failed request.

Each host is a network namespace of its own with a real OpenSSH server (tests/helpers/ansible_fleet.py,
its own namespaces and subnet, so this file can run beside test_ansible_release.py). Ansible logs in
over SSH with an Airflow connection's key and host keys. The hosts share this machine's filesystem,
so they share the run's vLLM virtualenv: the role's install step runs on it (pip finds every pin
satisfied, offline), and each host starts real vLLM servers through the role's supervisor.

HAProxy health-checks the runtime's ready path (``/v1/models``); the role puts a host back into
rotation only when the supervisor's truthful readiness held: the model listed, from the expected
digest, and a warm-up completion answered.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from model_delivery.deploy import Candidate
from model_delivery.deploy.ansible.target import AnsibleTarget
from model_delivery.runtimes import get_runtime
from model_delivery.settings import Settings
from model_delivery.spec import load_spec
from model_delivery.store import ArtifactStore
from tests.helpers.ansible_fleet import (
    HAProxy,
    Host,
    LoadGenerator,
    SshFleet,
    ensure_debian_packages,
    stop_fleet,
)
from tests.helpers.lm import VLLM_ARGS, kill_session, store_two_lms
from tests.helpers.models import copy_models, edit_spec
from tests.helpers.release import environ

pytestmark = pytest.mark.integration

MODEL = "code_lm"
SSH_CONN_ID = "md_vllm_fleet_ssh"
PROMPT = {"model": MODEL, "prompt": "def ", "max_tokens": 4, "temperature": 0}
VLLM = get_runtime("vllm")


@dataclass
class Fleet:
    base: Path
    model_dir: Path
    settings: Settings
    store: ArtifactStore
    ssh: SshFleet
    lb: HAProxy
    v1: Candidate
    v2: Candidate
    vllm_python: str

    @property
    def hosts(self) -> list[Host]:
        return self.ssh.hosts

    def target(self, serial: int | str) -> AnsibleTarget:
        edit_spec(self.model_dir, lambda spec: spec["deploy"]["ansible"].update(serial=serial))
        return AnsibleTarget(load_spec(self.model_dir), self.settings, self.store, log=_timings)

    def served(self) -> dict[str, str | None]:
        return {h.name: VLLM.served_digest(h.url, MODEL, timeout=5) for h in self.hosts}

    def load(self) -> LoadGenerator:
        return LoadGenerator(self.lb.front_url, MODEL, PROMPT, path="/v1/completions", interval=0.2, timeout=60)


def _timings(fmt: str, *args: Any) -> None:
    """The target's log, but Ansible's own lines: how long each playbook took (shown with -s or on failure)."""
    if not fmt.startswith("ansible | "):
        print(fmt % args, flush=True)


def _stop_instances(base: Path) -> None:
    """Stop every supervisor (each leads a session of its own: vLLM's engine goes with it) and its shm."""
    for pidfile in (base / "hosts").glob("*/run/*.pid"):
        try:
            kill_session(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            continue


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path, tiny_lm: Path, vllm_python: str):
    try:
        ensure_debian_packages({"haproxy": "haproxy"})
    except RuntimeError as exc:
        pytest.fail(str(exc))
    base = tmp_path_factory.mktemp("ansible_vllm")
    store = ArtifactStore(f"file://{base}/store")
    v1, v2 = store_two_lms(store, tiny_lm, base)
    models = copy_models(base / "models", (MODEL,))
    settings = Settings(home=base / "home", models_dir=models, artifact_root=f"file://{base}/store",
                        artifact_conn_id=None, tracking_uri=f"sqlite:///{base / 'mlflow.db'}")
    ssh = SshFleet(base, 2, tag="v", subnet=232)
    try:
        hosts = ssh.start()
        lb = HAProxy(base, hosts, MODEL, check_path=VLLM.ready_path, server_timeout="60s").start()
        try:
            offline = base / "no-wheels"  # pip must find every pin already satisfied: nothing is downloaded
            offline.mkdir()
            inventory = ssh.inventory(offline)
            inventory["all"]["children"]["model_servers"]["vars"].update(
                model_server_vllm_venv=str(Path(vllm_python).parents[1]), model_server_install_throttle=1,
                model_server_python=sys.executable,
                # Three servers (two hosts' live ones and a staging one) share two cores here: one OpenMP thread
                # each, sleeping when idle rather than spinning (a host's own variables, over the runtime's).
                model_server_host_env={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
            (models / MODEL / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
            edit_spec(models / MODEL, lambda spec: spec.update(serving={"runtime": "vllm", "args": VLLM_ARGS},
                                                                deploy={"target": "ansible", "ansible": {
                "inventory": "inventory.yml", "ssh_conn_id": SSH_CONN_ID, "max_fail_percentage": 0,
                "load_balancer": {"runtime_api": str(lb.socket), "front_url": lb.front_url},
                "drain_timeout_seconds": 20}}))
            with environ({f"AIRFLOW_CONN_{SSH_CONN_ID.upper()}": json.dumps(ssh.connection())}):
                yield Fleet(base, models / MODEL, settings, store, ssh, lb, Candidate(MODEL, "1", v1.digest),
                            Candidate(MODEL, "2", v2.digest), vllm_python)
        finally:
            _stop_instances(base)
            lb.stop()
    finally:
        stop_fleet(base)
        ssh.stop()


def test_the_role_installs_and_starts_vllm_on_every_host_behind_haproxy(fleet: Fleet) -> None:
    target = fleet.target("100%")  # the first version on both hosts at once
    staged = target.stage(fleet.v1, "run-1")
    assert staged["staging_host"] == "host1" and staged["url"] == fleet.hosts[0].staging_url
    assert VLLM.served_digest(staged["url"], MODEL) == fleet.v1.digest  # truthful readiness held on the host

    shifted = target.shift("run-1")
    target.retire("run-1")

    assert shifted["updated"] == ["host1", "host2"]
    assert fleet.served() == {h.name: fleet.v1.digest for h in fleet.hosts}
    assert fleet.lb.statuses() == {h.name: "UP" for h in fleet.hosts}
    answer = httpx.post(f"{fleet.lb.front_url}/v1/completions", json=PROMPT, timeout=60)
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"], answer.text
    for host in fleet.hosts:
        live = json.loads((host.root / "live.json").read_text())
        assert live["ready"] == "openai" and "vllm.entrypoints.openai.api_server" in live["command"]
        assert live["python"] == fleet.vllm_python  # vLLM's own venv, shared by the hosts here
        assert live["env"]["OMP_NUM_THREADS"] == "1" and live["env"]["HF_HUB_OFFLINE"] == "1"  # host's over runtime's
        assert not (host.root / "staging.json").exists()
        assert not (host.root / "venv").exists()  # the model server's own venv is not installed for vLLM
    # A second run of the same release changes nothing on any host.
    again = target.stage(fleet.v1, "run-1b")
    assert again["staging_host"] is None and again["changed"] == 0, again


def test_a_new_lm_rolls_over_the_hosts_one_by_one_with_no_failed_request(fleet: Fleet) -> None:
    target = fleet.target(1)
    target.stage(fleet.v2, "run-2")
    with fleet.load() as load:
        shifted = target.shift("run-2")

    assert load.report.total > 0
    assert load.report.failed == 0, f"{load.report.line()}: {dict(load.report.errors)}"
    assert shifted["updated"] == ["host1", "host2"] and shifted["previous"] == "1"
    assert fleet.served() == {h.name: fleet.v2.digest for h in fleet.hosts}
    assert fleet.lb.statuses() == {h.name: "UP" for h in fleet.hosts}
