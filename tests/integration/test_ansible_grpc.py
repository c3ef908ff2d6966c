"""The ansible target with ``serving.grpc``, for real: ansible-playbook runs the role on two local-connection hosts
(each with its own root and ports), behind a real HAProxy whose configuration is the one
``model_delivery.deploy.ansible.haproxy`` renders, with an HTTP and a gRPC frontend.

Stage starts the candidate with a gRPC port on the staging host, out of rotation (HAProxy's gRPC frontend keeps
answering from production); the smoke test passes over gRPC against it; the rolling update drains and restores
each host in both backends, and verify passes over gRPC through HAProxy.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from typing import TYPE_CHECKING

import pytest
import yaml

from model_delivery.deploy import Candidate, get_target
from model_delivery.deploy.ansible.haproxy import LbServer, haproxy_config
from model_delivery.deploy.ansible.target import AnsibleTarget
from model_delivery.settings import Settings
from model_delivery.smoke import grpc_served_digest, load_golden, run_smoke
from model_delivery.spec import load_spec
from model_delivery.store import ArtifactStore
from tests.helpers.ansible_fleet import inventory, make_hosts, stop_fleet
from tests.helpers.models import build_and_store, copy_models, edit_spec, free_port
from tests.helpers.processes import stop_processes

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

MODEL = "breast_cancer"


def _statuses(target: AnsibleTarget, socket: str) -> dict[str, str]:
    from tests.helpers.ansible_module import load_ansible_module
    from tests.helpers.models import PROJECT

    md = load_ansible_module(PROJECT / "include" / "ansible" / "roles" / "model_server" / "library" / "md_haproxy.py",
                             "md_haproxy_grpc_test")
    return {f"{backend}/{host}": md.server_stat(socket, backend, host)["status"]
            for backend in (MODEL, f"{MODEL}_grpc") for host in ("host1", "host2")}


def test_a_release_with_grpc_stages_out_of_rotation_and_rolls_out_behind_haproxys_grpc_frontend(
    tmp_path: Path, haproxy_installed: None, wheels: Path
) -> None:
    store_root = f"file://{tmp_path / 'store'}"
    store = ArtifactStore(store_root)
    v1 = build_and_store(tmp_path / "v1", store, None)
    v2 = build_and_store(tmp_path / "v2", store, {"C": 0.5})
    hosts = make_hosts(tmp_path, 2)
    for host in hosts:
        host.vars.update(model_server_grpc_port=free_port(), model_server_staging_grpc_port=free_port())
    models = copy_models(tmp_path / "models", (MODEL,))
    model_dir = models / MODEL
    (model_dir / "inventory.yml").write_text(yaml.safe_dump(inventory(hosts, wheels, tmp_path / "hosts" / "venv")))

    socket = str(tmp_path / "haproxy" / "admin.sock")
    (tmp_path / "haproxy").mkdir()
    front, grpc_front = free_port(), free_port()
    cfg = haproxy_config(backend=MODEL, servers=[LbServer(h.name, h.address, h.port, h.vars["model_server_grpc_port"])
                                                 for h in hosts],
                         bind=f"127.0.0.1:{front}", runtime_api=socket, grpc_bind=f"127.0.0.1:{grpc_front}",
                         check_interval="300ms")
    (tmp_path / "haproxy" / "haproxy.cfg").write_text(cfg)
    checked = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy" / "haproxy.cfg")], capture_output=True,
                             text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log = open(tmp_path / "haproxy" / "haproxy.log", "wb")  # noqa: SIM115 - closed below
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(tmp_path / "haproxy" / "haproxy.cfg")], stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    edit_spec(model_dir, lambda spec: (
        spec.update(serving={"grpc": True}), spec["smoke"].update(protocol="grpc"),
        spec["deploy"].update(target="ansible", ansible={
            "inventory": "inventory.yml", "serial": 1, "ready_timeout_seconds": 90, "drain_timeout_seconds": 5,
            "load_balancer": {"runtime_api": socket, "front_url": f"http://127.0.0.1:{front}",
                              "grpc_front": f"127.0.0.1:{grpc_front}"}})))
    settings = Settings(home=tmp_path / "home", models_dir=models, artifact_root=store_root, artifact_conn_id=None,
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    lines: list[str] = []
    spec = load_spec(model_dir)
    target = get_target(spec, settings, store, log=lambda fmt, *args: lines.append(fmt % args))
    assert isinstance(target, AnsibleTarget)
    cases = load_golden(model_dir / spec.smoke.golden)
    try:
        staged = target.stage(Candidate(MODEL, "1", v1.digest), "run-1")
        staging_host = next(h for h in hosts if h.name == staged["staging_host"])
        assert staged["grpc_url"] == f"127.0.0.1:{staging_host.vars['model_server_staging_grpc_port']}"
        smoke = run_smoke(staged["url"], MODEL, cases, repeats=2, budget_ms=60_000, expect_digest=v1.digest,
                          protocol="grpc", grpc_address=staged["grpc_url"])
        assert smoke["passed"], smoke["failures"]

        shifted = target.shift("run-1")
        assert shifted["grpc_url"] == f"127.0.0.1:{grpc_front}", "\n".join(lines[-60:])
        verify = run_smoke(shifted["url"], MODEL, cases, repeats=3, budget_ms=60_000, expect_digest=v1.digest,
                           protocol="grpc", grpc_address=shifted["grpc_url"])
        assert verify["passed"], verify["failures"]
        assert set(_statuses(target, socket).values()) == {"UP"}
        target.retire("run-1")

        staged = target.stage(Candidate(MODEL, "2", v2.digest), "run-2")
        assert grpc_served_digest(staged["grpc_url"]) == v2.digest
        # the candidate's gRPC port is in no backend: the frontend answers from production only
        assert {grpc_served_digest(f"127.0.0.1:{grpc_front}") for _ in range(8)} == {v1.digest}

        target.shift("run-2")
        assert {grpc_served_digest(f"127.0.0.1:{grpc_front}") for _ in range(8)} == {v2.digest}
        assert set(_statuses(target, socket).values()) == {"UP"}
    finally:
        with contextlib.suppress(Exception):
            target.rollback("run-2")
        stop_processes([haproxy])
        log.close()
        stop_fleet(tmp_path)
        time.sleep(0.1)
