"""``model-delivery``: command-line helpers around releases.

    model-delivery summary <model>    what serves the model now, how to query it, the last report
    model-delivery release <model>    trigger a release through the Airflow REST API [--wait]; exit 0/1/2/3
    model-delivery render-k8s <model> the model's Kubernetes manifests (YAML) for review or GitOps
    model-delivery lease <model>      who holds the model's deploy lease, and its journal's last entries
    model-delivery unlock <model> --reason R
                                      end a quarantine (after a failed rollback), recorded with who and why
"""

from __future__ import annotations

import argparse
import json
import sys

from model_delivery.settings import get_settings


def _latest_record(artifact_root: str, model: str) -> dict | None:
    from airflow.sdk import ObjectStoragePath

    releases = ObjectStoragePath(artifact_root) / model / "releases"
    if not releases.exists():
        return None
    records = [p / "release.json" for p in releases.iterdir() if (p / "release.json").exists()]
    if not records:
        return None
    newest = max(records, key=lambda p: json.loads(p.read_text()).get("finished_at") or "")
    return json.loads(newest.read_text())


def summary(model: str) -> int:
    """Print where the model serves, a ready-to-run query and the newest release report."""
    from model_delivery.deploy import get_target
    from model_delivery.smoke import load_golden
    from model_delivery.spec import load_spec

    settings = get_settings()
    spec = load_spec(settings.models_dir / model)
    status = get_target(spec, settings, settings.open_store()).status()
    record = _latest_record(settings.artifact_root, model)
    print()
    if record:
        print(f"Release {record['run_id']}: {record.get('outcome', 'in progress')}")
        for reason in record.get("reasons") or []:
            print(f"  - {reason}")
        print(f"Report:  {record.get('report', '(not written yet)')}")
    active = status["active"]
    if not (active and status["active_alive"]):
        print(f"{model} is not serving.")
        return 1
    request = settings.home / f"{model}-request.json"
    request.parent.mkdir(parents=True, exist_ok=True)
    golden = settings.models_dir / model / spec.smoke.golden
    url = status["front_url"]
    print(f"{model} version {active['version']} ({active['digest'][:19]}…) is serving at {url}")
    print("Query it:")
    if spec.task == "language-model":
        from model_delivery.smoke_lm import load_golden_prompts

        prompt = load_golden_prompts(golden)[0]
        request.write_text(json.dumps({"model": model, "prompt": prompt.prompt, "max_tokens": prompt.max_tokens,
                                       "temperature": 0}))
        print(f"  curl -s {url}/v1/completions -H 'content-type: application/json' -d @{request}")
        print(f"  curl -s {url}/v1/models           # what is served, from which artifact (root)")
    else:
        request.write_text(json.dumps({"inputs": load_golden(golden)[0].inputs}))
        print(f"  curl -s {url}/v2/models/{model}/infer -H 'content-type: application/json' -d @{request}")
        print(f"  curl -s {url}/v2/models/{model}     # metadata")
    print(f"  curl -s {url}/metrics               # Prometheus metrics")
    print("Stop the servers with: scripts/stop-servers.sh")
    return 0


def render_k8s(model: str, version: str | None, digest: str | None, parts: str, candidate: bool) -> int:
    """Print the Kubernetes manifests of a model version as YAML."""
    from model_delivery.deploy.kubernetes.manifests import CANDIDATE, STABLE, to_yaml
    from model_delivery.deploy.kubernetes.target import render
    from model_delivery.spec import load_spec

    settings = get_settings()
    spec = load_spec(settings.models_dir / model)
    if parts != "rbac" and not (version and digest):
        from model_delivery.registry import PRODUCTION

        production = settings.open_registry().alias(model, PRODUCTION)
        if production is None:
            print(f"{model} has no production version yet: give --version and --digest", file=sys.stderr)
            return 2
        version, digest = production.version, production.digest
    try:
        objects = render(spec, settings, version or "0", digest or "sha256:" + "0" * 64, parts=parts,
                         track=CANDIDATE if candidate else STABLE)
    except ValueError as exc:
        print(f"render-k8s: {exc}", file=sys.stderr)
        return 2
    print(to_yaml(objects), end="")
    return 0


def lease(model: str, entries: int = 10) -> int:
    """Print the model's lease (or quarantine) and its newest journal entries."""
    ledger = get_settings().open_ledger()
    held = ledger.holder(model)
    print(json.dumps({"model": model, "lease": held, "journal": ledger.journal(model)[-entries:]}, indent=2,
                     default=str))
    return 0


def unlock(model: str, reason: str) -> int:
    """End the model's quarantine: exit 0 when it was locked, 1 when it was not, 2 without a reason."""
    import getpass

    from model_delivery.exceptions import ModelDeliveryError

    try:
        held = get_settings().open_ledger().unlock(model, by=getpass.getuser(), reason=reason)
    except ModelDeliveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if held is None:
        print(f"{model} was not locked; recorded anyway")
        return 1
    quarantine = held.get("quarantine")
    what = f"quarantine ({quarantine['reason']})" if quarantine else f"lease of {held['dag_id']} run {held['run_id']}"
    print(f"{model}: ended the {what}; recorded with your reason")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model-delivery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    summary_cmd = sub.add_parser("summary", help="what serves a model now and its last release report")
    summary_cmd.add_argument("model")
    render_cmd = sub.add_parser("render-k8s", help="print the model's Kubernetes manifests (YAML)")
    render_cmd.add_argument("model")
    render_cmd.add_argument("--version", help="model version (default: the registry's production version)")
    render_cmd.add_argument("--digest", help="its artifact digest, sha256:<hex> (default: as --version)")
    render_cmd.add_argument("--rbac", action="store_const", const="rbac", dest="parts",
                            help="only the deployer's ServiceAccount, Role and RoleBinding")
    render_cmd.add_argument("--workload", action="store_const", const="workload", dest="parts",
                            help="only what the deployer applies")
    render_cmd.add_argument("--candidate", action="store_true", help="the candidate Deployment instead of production")
    lease_cmd = sub.add_parser("lease", help="who holds the model's deploy lease; its newest journal entries")
    lease_cmd.add_argument("model")
    unlock_cmd = sub.add_parser("unlock", help="end a model's quarantine after a person checked what serves")
    unlock_cmd.add_argument("model")
    unlock_cmd.add_argument("--reason", required=True, help="what was checked or fixed (recorded in the journal)")
    from model_delivery.ci import add_parser, release

    add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "release":
        return release(args)
    if args.command == "summary":
        return summary(args.model)
    if args.command == "lease":
        return lease(args.model)
    if args.command == "unlock":
        return unlock(args.model, args.reason)
    if args.command == "render-k8s":
        return render_k8s(args.model, args.version, args.digest, args.parts or "all", args.candidate)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
