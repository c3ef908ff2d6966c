"""``model-delivery``: command-line helpers around releases.

    model-delivery summary <model>    what serves the model now, how to query it, the last report
    model-delivery release <model>    trigger a release through the Airflow REST API [--wait]; exit 0/1/2/3
    model-delivery render-k8s <model> the model's Kubernetes manifests (YAML) for review or GitOps
    model-delivery lease <model>      who holds the model's deploy lease, and its journal's last entries
    model-delivery unlock <model> --reason R
                                      end a quarantine (after a failed rollback), recorded with who and why
    model-delivery store migrate      move a store of the legacy layout (files beside manifests) into blobs
    model-delivery store gc [--keep-last N] [--grace-hours H] [--dry-run]
                                      remove artifacts outside the retention rule and unreferenced blobs
    model-delivery store verify <model> <digest>
                                      re-hash a stored artifact on every core; exit 3 if it does not match
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from model_delivery.exceptions import InvalidModelSpec
from model_delivery.settings import get_settings


def summary(model: str) -> int:
    """Print where the model serves, a ready-to-run query and the newest release report."""
    from model_delivery.deploy import get_target
    from model_delivery.smoke import load_golden
    from model_delivery.spec import load_spec
    from model_delivery.store.records import latest_record

    settings = get_settings()
    spec = load_spec(settings.models_dir / model)
    status = get_target(spec, settings, settings.open_store()).status()
    record = latest_record(settings.open_store(), model)
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


def protected_digests(models: list[str]) -> dict[str, set[str]]:
    """What garbage collection must keep: every registry alias, and every digest the ledger names.

    The ledger holds what each target serves, stages or keeps warm, and every lease and journal
    entry of a run in flight; any ``sha256:<hex>`` in it is kept.
    """
    import re

    from model_delivery.deploy import TARGETS
    from model_delivery.registry import PREVIOUS, PRODUCTION

    settings = get_settings()
    registry, ledger = settings.open_registry(), settings.open_ledger()
    keep: dict[str, set[str]] = {}
    for model in models:
        found = keep.setdefault(model, set())
        for alias in (PRODUCTION, PREVIOUS):
            version = registry.alias(model, alias)
            if version is not None:
                found.add(version.digest)
        named = [ledger.holder(model), ledger.journal(model), *(ledger.state(model, t) for t in TARGETS)]
        found.update(re.findall(r"sha256:[0-9a-f]{64}", json.dumps(named, default=str)))
    return keep


def store_command(args: argparse.Namespace) -> int:
    """``store migrate``, ``store gc`` and ``store verify``."""
    from model_delivery.exceptions import TamperedArtifact
    from model_delivery.store import UnsupportedByStore

    store = get_settings().open_store()

    def say(fmt: str, *values: object) -> None:
        print(fmt % values, flush=True)

    if args.store_command == "migrate":
        try:
            print(json.dumps(store.migrate(log=say)))
        except UnsupportedByStore as exc:  # an oci:// store: nothing to migrate
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.store_command == "verify":
        try:
            manifest = store.verify(args.model, args.digest, log=say)
        except (TamperedArtifact, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
        print(f"{args.model} {args.digest}: {len(manifest['files'])} file(s) verified")
        return 0
    try:
        report = store.collect_garbage(protected_digests(store.layout.models()), keep_last=args.keep_last,
                                       grace_seconds=args.grace_hours * 3600, dry_run=args.dry_run)
    except UnsupportedByStore as exc:  # an oci:// store: the registry collects its own garbage
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"dry_run": args.dry_run, **report.to_dict()}, indent=2))
    return 0


def _store_parser(sub: Any) -> None:
    store_cmd = sub.add_parser("store", help="the artifact store: migrate its layout, collect garbage, verify")
    store_sub = store_cmd.add_subparsers(dest="store_command", required=True)
    store_sub.add_parser("migrate", help="move legacy artifacts' files into blobs (verified; idempotent)")
    gc_cmd = store_sub.add_parser("gc", help="remove artifacts outside the retention rule, then unreferenced blobs")
    gc_cmd.add_argument("--keep-last", type=int, default=5, help="newest artifacts kept per model (default 5)")
    gc_cmd.add_argument("--grace-hours", type=float, default=24.0,
                        help="anything younger is kept: a put in flight uploads blobs before its manifest")
    gc_cmd.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    verify_cmd = store_sub.add_parser("verify", help="re-hash a stored artifact against its manifest")
    verify_cmd.add_argument("model")
    verify_cmd.add_argument("digest")


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
    _store_parser(sub)
    from model_delivery.ci import add_parser, release

    add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "release":
        return release(args)
    try:
        return _local_command(args)
    except InvalidModelSpec as exc:  # the message names the file, the field and the fix: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _local_command(args: argparse.Namespace) -> int:
    """The commands that read the model's spec and the store on this machine."""
    if args.command == "summary":
        return summary(args.model)
    if args.command == "lease":
        return lease(args.model)
    if args.command == "unlock":
        return unlock(args.model, args.reason)
    if args.command == "store":
        return store_command(args)
    if args.command == "render-k8s":
        return render_k8s(args.model, args.version, args.digest, args.parts or "all", args.candidate)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
