"""Ansible rollout time against the number of hosts (1, 3, 6), and failed requests during each rollout.

For each fleet size a fresh fleet of hosts, each a network namespace with a real OpenSSH
server that Ansible logs in to with a key from an Airflow connection, sits behind a real
HAProxy (Debian's packages, installed when missing), exactly as in
tests/integration/test_ansible_release.py. Untimed: the runtime install,
version 1 rolled out, version 2 staged. Timed: ``AnsibleTarget.shift`` of version 2
(rolling, ``serial: 1``: drain, switch, health check, enable per host), while a load
generator sends requests through HAProxy, each on a new connection. Hosts are prepared
in parallel; the rollout itself is host by host, so the time grows with the hosts. With one
host there is nothing to send traffic to while it restarts, so its failed requests are
expected; with more hosts any failed request makes the benchmark exit non-zero.

Ratio = rollout time with n hosts / rollout time with 1 host.

    .venv/bin/python bench/bench_ansible.py [--hosts 1,3,6] [--quick]

``make bench`` runs it through run_all.py; ``--quick`` measures 1 and 3 hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT), str(PROJECT / "plugins"), str(PROJECT / "include" / "serving")]

from tests.helpers.ansible_fleet import (  # noqa: E402
    HAProxy,
    LoadGenerator,
    SshFleet,
    ensure_debian_packages,
    golden_request,
    stop_fleet,
    wheelhouse,
)
from tests.helpers.models import copy_models, edit_spec  # noqa: E402

MODEL = "breast_cancer"
SSH_CONN_ID = "bench_fleet_ssh"


def build(models: Path, work: Path, c: float) -> Path:
    out = work / f"build-{c}"
    subprocess.run([sys.executable, str(models / MODEL / "train.py"), "--output-dir", str(out),
                    "--params", json.dumps({"C": c, "max_iter": 1000, "seed": 7})], check=True, capture_output=True)
    return out / "model"


def rollout(n: int, work: Path, wheels: Path, builds: list[Path]) -> dict[str, float | int]:
    from model_delivery.deploy import Candidate
    from model_delivery.deploy.ansible.target import AnsibleTarget
    from model_delivery.settings import get_settings
    from model_delivery.spec import load_spec
    from model_delivery.store import ArtifactStore

    base = work / f"fleet-{n}"
    os.environ["MODEL_DELIVERY_HOME"] = str(base / "home")
    models = copy_models(base / "models", (MODEL,))
    os.environ["MODEL_DELIVERY_MODELS_DIR"] = str(models)
    fleet = SshFleet(base, n)
    lb: HAProxy | None = None
    try:
        hosts = fleet.start()
        os.environ[f"AIRFLOW_CONN_{SSH_CONN_ID.upper()}"] = json.dumps(fleet.connection())
        (models / MODEL / "inventory.yml").write_text(yaml.safe_dump(fleet.inventory(wheels, work / "venv")))
        lb = HAProxy(base, hosts, MODEL).start()
        edit_spec(models / MODEL, lambda spec: spec["deploy"].update(target="ansible", ansible={
            "inventory": "inventory.yml", "ssh_conn_id": SSH_CONN_ID, "serial": 1,
            "load_balancer": {"runtime_api": str(lb.socket), "front_url": lb.front_url},
            "ready_timeout_seconds": 120, "drain_timeout_seconds": 10}))
        settings = get_settings()
        store = ArtifactStore(settings.artifact_root)
        digests = [store.put_directory(MODEL, path).digest for path in builds]
        log_path = base / "ansible.log"
        with open(log_path, "w") as log_file:
            def log(fmt: str, *args: object) -> None:
                log_file.write((fmt % args) + "\n")

            target = AnsibleTarget(load_spec(models / MODEL), settings, store, log=log)
            target.stage(Candidate(MODEL, "1", digests[0]), "bench-1")
            target.shift("bench-1")
            target.retire("bench-1")
            target.stage(Candidate(MODEL, "2", digests[1]), "bench-2")
            with LoadGenerator(lb.front_url, MODEL, golden_request(models / MODEL)) as load:
                started = time.perf_counter()
                result = target.shift("bench-2")
                seconds = time.perf_counter() - started
        if result["updated"] != [h.name for h in hosts]:
            raise RuntimeError(f"rollout to {n} hosts updated {result['updated']}; see {log_path}")
        return {"hosts": n, "seconds": seconds, "requests": load.report.total, "failed": load.report.failed}
    finally:
        if lb is not None:
            lb.stop()
        stop_fleet(base)
        fleet.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default=None, help="comma-separated fleet sizes; the first is the baseline "
                        "(default 1,3,6; with --quick 1,3)")
    parser.add_argument("--quick", action="store_true", help="1 and 3 hosts only")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.hosts or ("1,3" if args.quick else "1,3,6")).split(",") if s.strip()]
    ensure_debian_packages({"haproxy": "haproxy"})
    with tempfile.TemporaryDirectory(prefix="bench-ansible-") as tmp:
        work = Path(tmp)
        wheels = wheelhouse(work / "wheels")
        models = copy_models(work / "models", (MODEL,))
        builds = [build(models, work, 1.0), build(models, work, 0.5)]
        results = []
        for n in sizes:
            row = rollout(n, work, wheels, builds)
            results.append(row)
            print(f"rollout to {n} host(s): {row['seconds']:.1f} s; failed requests: {row['failed']} of "
                  f"{row['requests']}", flush=True)
    baseline = results[0]
    print()
    for row in results:
        ratio = float(row["seconds"]) / float(baseline["seconds"])
        print(f"RATIO ansible_rollout_{row['hosts']}: {ratio:.2f}x ({row['hosts']} hosts / {baseline['hosts']} host)"
              f"  failed requests: {row['failed']} of {row['requests']}")
    if any(row["hosts"] == 1 and row["failed"] for row in results):
        print("(1 host: the only server is drained while it restarts, so requests fail during that gap; "
              "a fleet needs more hosts than the batch size for a rollout without failed requests)")
    return 1 if any(row["failed"] for row in results if int(row["hosts"]) > 1) else 0


if __name__ == "__main__":
    sys.exit(main())
