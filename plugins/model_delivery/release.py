"""The stages of a release as plain functions over a :class:`ReleaseContext`.

Operators are thin wrappers around these; ``bench/bench_release.py`` calls them as a
plain script. Nothing here imports Airflow's task machinery.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_delivery.exceptions import (
    DryRunComplete,
    GateRejected,
    InvalidConf,
    ReleaseFailed,
    SmokeTestFailed,
)
from model_delivery.settings import PROJECT_ROOT, OpensStores, Settings, get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from model_delivery.build import BuildOutputs
    from model_delivery.deploy import DeployTarget
    from model_delivery.records import ReleaseRecord
    from model_delivery.spec import ModelSpec


CONF_KEYS = ("reason", "force", "dry_run")
MAX_REASON = 500
"""Characters a ``reason`` may have (the DAG's param says the same to Airflow)."""
_CONF_TYPES: dict[str, tuple[type, str]] = {
    "reason": (str, "a string"), "force": (bool, "true or false"), "dry_run": (bool, "true or false"),
}


def _echo(value: Any, limit: int = 60) -> str:
    """A value as it may appear in a refusal: its repr, cut at ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_conf(conf: Any) -> None:
    """Refuse a run's conf the release does not accept, in one line naming the key and the fix.

    The rules JSON schema cannot state for Airflow's params: the conf is a JSON object, it has no key the
    release does not know (a typo must not be silently ignored), and ``force`` comes with a non-empty
    ``reason`` (each param is validated alone, so the trigger form cannot require one field because of
    another: this check, the build task's first step, is where that rule holds). The types and the reason's
    length are checked too, for callers that skip the params (``model-delivery release`` checks before it
    triggers). A null value is the key's default (:data:`CONF_DEFAULTS`): a null ``reason`` is empty. A bad
    value is never echoed whole.

    :raises InvalidConf: naming the key.
    """
    if not isinstance(conf, dict):
        raise InvalidConf(f"conf must be a JSON object (got {'a list' if isinstance(conf, list) else _echo(conf)}). "
                          'Fix: pass an object such as {"reason": "weekly retrain"}, or no conf at all.')
    unknown = sorted((_echo(key, 40) if not isinstance(key, str) or len(key) > 40 else key) for key in conf
                     if key not in CONF_KEYS)
    if unknown:
        listed = f"{unknown[:5]}" + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise InvalidConf(f"conf has unknown key(s) {listed}; a release takes only {list(CONF_KEYS)}. "
                          "Fix: correct the spelling and trigger again.")
    for key, (kind, what) in _CONF_TYPES.items():
        value = conf.get(key)
        if value is not None and not isinstance(value, kind):
            raise InvalidConf(f"conf '{key}' must be {what} (got {_echo(value)}). Fix: correct it and trigger again.")
    reason = conf.get("reason") or ""
    if len(reason) > MAX_REASON:
        raise InvalidConf(f"conf 'reason' has {len(reason)} characters, more than {MAX_REASON}. "
                          "Fix: say why in fewer words (link to the details).")
    if conf.get("force") and not reason.strip():
        raise InvalidConf("conf 'force' is true but 'reason' is empty: a forced release must say why. "
                          'Fix: trigger again with {"force": true, "reason": "..."}.')


CONF_DEFAULTS: dict[str, Any] = {"reason": "", "force": False, "dry_run": False}
"""What a conf key that is absent or null means. The params allow null (so Airflow's trigger form does not mark
them required), and ``airflow dags trigger`` or the REST API may send ``"reason": null``: null is empty."""


def recorded_conf(params: dict[str, Any]) -> dict[str, Any]:
    """A run's params as the release record keeps them: a null ``reason``, ``force`` or ``dry_run`` becomes
    its default (``""``, false); other keys (a rollback's ``model``, ``version``) are kept as they are."""
    return {key: CONF_DEFAULTS[key] if value is None and key in CONF_DEFAULTS else value
            for key, value in params.items()}


def check_before_build(rc: ReleaseContext) -> None:
    """What the build task checks in its first seconds, before it builds anything: the conf, and that no other
    model's spec claims one of this model's fixed ports. Each refusal is final (no retries)."""
    from model_delivery.spec import check_port_clashes, discover_specs

    check_conf(rc.conf)
    others, _ = discover_specs(rc.settings.models_dir)  # a broken spec is its own problem, reported at parse
    check_port_clashes(rc.spec, rc.model_dir, others.values())


@dataclass
class ReleaseContext(OpensStores):
    """Everything a stage needs to know about the release it is part of.

    :param model: model name (its folder under the models directory).
    :param run_id: the release run's id; names the record directory.
    :param dag_id: the release DAG.
    :param conf: the run's validated params (``reason``, ``force``, ``dry_run``).
    :param log: where stages report progress.
    :param dagrun_state: the state of a DagRun by (dag_id, run_id), through the Task SDK (None outside Airflow):
        how a lease's holder is judged.
    :param last_try: this is the task's last try (a rollback failing on it quarantines the model).
    """

    model: str
    run_id: str
    dag_id: str
    conf: dict[str, Any] = field(default_factory=dict)
    log: Callable[..., None] = print
    settings: Settings = field(default_factory=get_settings)
    dagrun_state: Callable[[str, str], str] | None = None
    last_try: bool = True

    @property
    def model_dir(self) -> Path:
        return self.settings.models_dir / self.model

    @cached_property
    def spec(self) -> ModelSpec:
        from model_delivery.spec import load_spec

        return load_spec(self.model_dir)

    @cached_property
    def record(self) -> ReleaseRecord:
        from model_delivery.records import ReleaseRecord

        return ReleaseRecord(self.store, self.model, self.run_id)

    @cached_property
    def target(self) -> DeployTarget:
        from model_delivery.deploy import get_target

        return get_target(self.spec, self.settings, self.store, log=self.log)

    def holder_alive(self, lease: dict[str, Any]) -> bool:
        """Whether the run holding a lease still runs: its DagRun's state when Airflow can tell; else
        (a plain script, a deleted run) its record has no outcome and its heartbeat is within the TTL."""
        from model_delivery.ledger import DEFAULT_TTL_SECONDS
        from model_delivery.records import ReleaseRecord

        if self.dagrun_state is not None:
            try:
                return self.dagrun_state(lease["dag_id"], lease["run_id"]) in ("queued", "running")
            except Exception as exc:  # noqa: BLE001 - an unknown run: judged by record and heartbeat
                self.log("the state of %s run %s is unknown (%s)", lease["dag_id"], lease["run_id"], exc)
        finished = ReleaseRecord(self.store, self.model, lease["run_id"]).load().get("outcome") is not None
        fresh = time.time() - float(lease.get("heartbeat") or 0) < float(lease.get("ttl") or DEFAULT_TTL_SECONDS)
        return fresh and not finished

    def hold_lease(self) -> None:
        """Check this run still holds the model's lease (and renew it); raise ``LeaseLost`` if not."""
        from model_delivery.ledger import LeaseLost

        if not self.ledger.heartbeat(self.model, self.run_id):
            holder = self.ledger.holder(self.model) or {}
            raise LeaseLost(f"run {self.run_id} no longer holds the deploy lease of {self.model} (held by "
                            f"{holder.get('dag_id')} run {holder.get('run_id')}); it changes nothing more. "
                            "Fix: trigger a new run.")

    def candidate(self, build: dict[str, Any]) -> Any:
        from model_delivery.deploy import Candidate

        return Candidate(self.model, str(build["version"]), str(build["digest"]))


def build(rc: ReleaseContext, outputs: BuildOutputs | None = None, *, pickle_scan: str | None = None) -> dict[str, Any]:
    """Run the build entrypoint (unless a container build passes its ``outputs``), scan, store, register.

    :param pickle_scan: the pickle scan policy (``refuse-dangerous``, ``warn``, ``off``); None: the spec's
        ``security.pickle_scan`` (``refuse-dangerous`` when the spec has none).
    :raises UnsafePickle: the build output holds a pickle the policy refuses; nothing is stored.
    """
    from model_delivery.build import check_serving, data_format, git_sha, run_build
    from model_delivery.build_env import build_tags
    from model_delivery.pickle_scan import check_artifact
    from model_delivery.signing import sign_artifact
    from model_server.manifest import build_manifest, manifest_digest

    check_before_build(rc)
    spec = rc.spec
    if outputs is None:
        outputs = run_build(spec, rc.model_dir, rc.settings.scratch_dir, log=lambda line: rc.log("build | %s", line))
    try:
        check_serving(spec, outputs.model_dir, rc.model_dir)  # before anything is stored
        scan = check_artifact(outputs.model_dir, pickle_scan or spec.security.pickle_scan, log=rc.log)
        artifact = rc.store.put_directory(spec.name, outputs.model_dir, log=rc.log)
        signature = sign_artifact(rc.store, spec.name, artifact.digest, outputs.model_dir, spec.signing, log=rc.log)
        data: dict[str, dict[str, Any]] = {}
        for name, path in outputs.data.items():
            dest = rc.record.dir / "data" / path.name
            sha, size = rc.store.put_file(path, dest)
            data[name] = {"uri": str(dest), "sha256": sha, "size_bytes": size, "format": data_format(path)}
    finally:
        shutil.rmtree(outputs.work_dir, ignore_errors=True)
    spec_digest = manifest_digest(build_manifest(rc.model_dir))
    lineage: dict[str, str] = {
        "git_sha": git_sha(PROJECT_ROOT),
        "dag_id": rc.dag_id,
        "run_id": rc.run_id,
        "artifact_uri": artifact.uri,
        **release_lineage(spec_digest, data),
        **build_tags(outputs.environment),
    }
    version, existed = rc.registry.register(
        spec.name, source=artifact.uri, digest=artifact.digest, tags=lineage,
        params={**spec.build.params}, description=spec.description,
    )
    rc.log("stored %s (%d files, %d bytes, reused=%s); registry version %s (existed=%s)",
           artifact.digest, artifact.files, artifact.size_bytes, artifact.reused, version.version, existed)
    no_change = _same_as_production(rc, version.version, lineage)
    if no_change:
        rc.log("version %s is production already, built from the same spec and data: nothing new", version.version)
    return {**artifact.to_dict(), "version": version.version, "version_existed": existed, "data": data,
            "no_change": no_change, **{k: lineage[k] for k in ("git_sha", "spec_digest")}, **signature,
            "build_env": outputs.environment, "pickle_scan": scan.to_dict()}


NO_CHANGE_KEYS = ("spec_digest", "data.train.sha256", "data.eval.sha256")


def release_lineage(spec_digest: Any, data: dict[str, Any] | None) -> dict[str, str]:
    """What a run releases from, as version tags: its spec digest and the digest of each data set.

    The build tags a version with it; promote tags it again under ``promoted.*`` (a reused version's
    own tags say what it was first built from); the no-change check compares the two.
    """
    values = {"spec_digest": spec_digest,
              **{f"data.{name}.sha256": entry.get("sha256") for name, entry in (data or {}).items()
                 if isinstance(entry, dict)}}
    return {key: str(value) for key, value in values.items() if value}


def _same_as_production(rc: ReleaseContext, version: str, lineage: dict[str, str]) -> bool:
    """True when production is this very version, released from the same spec and data digests.

    The digests compared are those of the run that last promoted it (``promoted.*`` tags), not
    those of the build that first made the artifact: after a spec edit that leaves the artifact
    the same (a description, a gate threshold), one run releases it again and the next ones are
    no-change. Versions promoted before these tags existed fall back to their build lineage.
    The git sha is recorded but not compared: a commit elsewhere in the repository is not a
    change of this model.
    """
    from model_delivery.registry import PRODUCTION

    production = rc.registry.alias(rc.model, PRODUCTION)
    if production is None or production.version != version:
        return False
    tags = production.tags
    return all(tags.get(PROMOTED + key, tags.get(key)) == lineage.get(key) for key in NO_CHANGE_KEYS)


PROMOTED = "promoted."
"""Prefix of the version tags that hold the lineage of the run that last promoted it (``promoted.spec_digest``)."""


def promoted_lineage(candidate: dict[str, Any]) -> dict[str, str]:
    """The ``promoted.*`` tags of a release's candidate (none for a rollback's, which has no lineage)."""
    lineage = release_lineage(candidate.get("spec_digest"), candidate.get("data"))
    return {PROMOTED + key: value for key, value in lineage.items() if key in NO_CHANGE_KEYS}


def has_changes(build: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether the release goes on after build: something changed, or the run is forced."""
    return bool(params.get("force")) or not build.get("no_change")


def _download(uri: str, dest: Path) -> Path:
    """Copy a file of the store to ``dest`` in fixed-size chunks: never whole in memory, whatever its size."""
    from airflow.sdk import ObjectStoragePath

    from model_server.manifest import hash_stream

    with ObjectStoragePath(uri).open("rb") as src, open(dest, "wb") as out:
        hash_stream(src.read, out.write)
    return dest


def _download_data(candidate: dict[str, Any], name: str, directory: Path) -> tuple[Path, str]:
    """Download the build's ``name`` data set into ``directory``; its local path and the format its record names.

    The file is named by that format (``eval.parquet``), whatever the stored name, and read as it.
    """
    from model_delivery.build import DATA_FORMATS, recorded_format

    entry = candidate["data"][name]
    fmt = recorded_format(entry, name)
    return _download(entry["uri"], directory / f"{name}{DATA_FORMATS[fmt]}"), fmt


def validate_data(rc: ReleaseContext, candidate: dict[str, Any]) -> dict[str, Any]:
    """Expectations, schema and drift on the training and evaluation data; raise if any fails.

    The full GX result of each data set is saved beside the release record; the returned
    summary (and the exception's ``result``) names each failed expectation, column,
    unexpected count and sample values, and every feature's drift statistic and threshold.
    """
    from model_delivery.validation.data import (
        ValidationFailed,
        load_suite,
        summarize_reference,
        validate_dataset,
    )

    spec = rc.spec
    config = spec.validation
    suite = load_suite(rc.model_dir / config.suite)
    categorical = [*config.categorical, *([spec.evaluation.label] if spec.task == "classification" else [])]
    reference = summarize_reference(rc.model_dir / config.reference, f"reference data {config.reference}",
                                    categorical=categorical, exclude=config.drift.exclude)
    scratch = rc.settings.scratch_dir / spec.name
    scratch.mkdir(parents=True, exist_ok=True)
    reports = {}
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        for name in ("train", "eval"):  # one data set on local disk at a time, read in bounded batches
            local, fmt = _download_data(candidate, name, Path(tmp))
            report = validate_dataset(local.name, local, reference, suite, config, categorical=categorical,
                                      workdir=Path(tmp), fmt=fmt)
            local.unlink()
            rc.store.write_json(rc.record.dir / "validation" / f"{name}.gx.json", report.gx_result)
            reports[name] = report
    problems = [line for report in reports.values() for line in report.problems()]
    for line in problems:
        rc.log("data check failed: %s", line)
    result = {
        "passed": not problems,
        "problems": problems,
        "datasets": {name: report.summary() for name, report in reports.items()},
        "gx_results": {name: str(rc.record.dir / "validation" / f"{name}.gx.json") for name in reports},
    }
    if problems:
        raise ValidationFailed(f"data validation failed ({len(problems)} problem(s)): " + "; ".join(problems[:10]),
                               result=result)
    rc.log("data checks passed: %s", ", ".join(f"{n} ({r.rows} rows)" for n, r in reports.items()))
    return result


def _champion(rc: ReleaseContext, candidate: dict[str, Any], scratch: Path,
              measure: Callable[[Path], tuple[dict[str, float], Any]]) -> tuple[dict[str, Any] | None, Any]:
    """The production version measured on the candidate's evaluation data (paired), if there is one.

    ``measure(artifact_dir)`` gives its metrics and what the bootstrap pairs (outputs or block scores).
    """
    from model_delivery.pickle_scan import check_artifact
    from model_delivery.registry import PRODUCTION
    from model_server.manifest import ArtifactIntegrityError, parse_digest

    champion = rc.registry.alias(rc.model, PRODUCTION)
    if champion is None:
        return None, None
    found: dict[str, Any] = champion.to_dict()
    if champion.version == str(candidate["version"]):
        return {**found, "same_as_candidate": True}, None
    try:
        artifact_dir = rc.store.fetch(rc.model, champion.digest, scratch / f"eval-{parse_digest(champion.digest)}",
                                      log=rc.log)
        # it may have been built before builds were scanned, or under another policy: scanned before it runs
        check_artifact(artifact_dir, rc.spec.security.pickle_scan, what=f"production version {champion.version}",
                       consequence="It is not loaded to be measured again.", log=rc.log)
        metrics, paired = measure(artifact_dir)
    except (ReleaseFailed, ArtifactIntegrityError, ValueError) as exc:
        rc.log("production version %s could not be measured on this data: %s", champion.version, exc)
        return {**found, "metrics": rc.registry.metrics_of(champion), "paired": False,
                "note": f"not measured on this data ({exc}); its recorded metrics are used"}, None
    return {**found, "metrics": metrics, "paired": True}, paired


def evaluate(rc: ReleaseContext, candidate: dict[str, Any]) -> dict[str, Any]:
    """Measure the candidate, and the production version on the same data; log to MLflow.

    A table model is measured on the evaluation rows (per-slice metrics for the gate's slices);
    a language model on the held-out text blocks. Bootstrap intervals when the gate asks.
    """
    from model_server.manifest import parse_digest

    spec = rc.spec
    scratch = rc.settings.scratch_dir / spec.name
    scratch.mkdir(parents=True, exist_ok=True)
    artifact_dir = rc.store.fetch(spec.name, candidate["digest"], scratch / f"eval-{parse_digest(candidate['digest'])}",
                                  log=rc.log)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        eval_data, fmt = _download_data(candidate, "eval", Path(tmp))
        measure = _evaluate_lm if spec.task == "language-model" else _evaluate_table
        result = measure(rc, candidate, artifact_dir, (eval_data, fmt), scratch)
    rc.registry.log_metrics(spec.name, candidate["version"], result["metrics"])
    rc.store.write_json(rc.record.dir / "metrics.json", result)
    baseline = (result["champion"] or {}).get("metrics") or {}
    for name, value in result["metrics"].items():
        versus = f" (production {baseline[name]:.4f}, {value - baseline[name]:+.4f})" if name in baseline else ""
        rc.log("metric %s = %.4f%s", name, value, versus)
    return result


def _bootstrap_config(rc: ReleaseContext) -> dict[str, Any] | None:
    config = rc.spec.gate.bootstrap
    return None if config is None else {"samples": config.samples, "confidence": config.confidence, "seed": config.seed}


def _evaluate_table(rc: ReleaseContext, candidate: dict[str, Any], artifact_dir: Path, eval_data: tuple[Path, str],
                    scratch: Path) -> dict[str, Any]:
    """A classification or regression model on the evaluation rows, predicted in a sandbox; the champion too.

    ``eval_data`` is the evaluation file and the format its record names.
    """
    from model_delivery.build_env import declare
    from model_delivery.evaluate import (
        bootstrap,
        compute_metrics,
        load_eval_frame,
        predict_frame,
        slice_metrics,
    )

    spec = rc.spec
    label, names = spec.evaluation.label, spec.evaluation.metrics
    frame = load_eval_frame(eval_data[0], label, fmt=eval_data[1])
    declared = declare(spec.name, spec.build)
    y = frame[label].to_numpy()

    def measure(directory: Path) -> tuple[dict[str, float], Any]:
        outputs = predict_frame(directory, frame, declared)
        return compute_metrics(spec.task, names, y, outputs), outputs

    metrics, outputs = measure(artifact_dir)
    result: dict[str, Any] = {"metrics": metrics, "rows": len(frame)}
    result["champion"], champion_outputs = _champion(rc, candidate, scratch, measure)
    result["slices"] = {
        s.column: slice_metrics(spec.task, names, frame, label, outputs, s.column) for s in spec.gate.slices
    }
    config = _bootstrap_config(rc)
    if config is not None:
        result["bootstrap"] = {**config, "intervals": bootstrap(spec.task, names, y, outputs, champion_outputs,
                                                                 **config)}
    return result


def _evaluate_lm(rc: ReleaseContext, candidate: dict[str, Any], artifact_dir: Path, eval_data: tuple[Path, str],
                 scratch: Path) -> dict[str, Any]:
    """A language model on the held-out text blocks, scored in a sandbox; the champion on the same blocks.

    ``eval_data`` is the evaluation file and the format its record names.
    """
    from model_delivery.build_env import declare
    from model_delivery.evaluate import bootstrap_blocks, lm_metrics, score_blocks

    spec = rc.spec
    declared = declare(spec.name, spec.build)

    def measure(directory: Path) -> tuple[dict[str, float], Any]:
        blocks = score_blocks(directory, eval_data[0], declared, max_length=spec.evaluation.max_length,
                              fmt=eval_data[1])
        found = lm_metrics(blocks)
        return {name: found[name] for name in spec.evaluation.metrics}, blocks

    metrics, blocks = measure(artifact_dir)
    result: dict[str, Any] = {"metrics": metrics, "rows": len(blocks), "unit": "blocks",
                              "tokens": sum(int(b["tokens"]) for b in blocks), "slices": {}}
    result["champion"], champion_blocks = _champion(rc, candidate, scratch, measure)
    rc.store.write_json(rc.record.dir / "lm_blocks.json", {"candidate": blocks, "champion": champion_blocks})
    config = _bootstrap_config(rc)
    if config is not None:
        intervals = bootstrap_blocks(blocks, champion_blocks, **config)
        result["bootstrap"] = {**config, "intervals": {k: v for k, v in intervals.items()
                                                        if k in spec.evaluation.metrics}}
    return result


def gate(rc: ReleaseContext, candidate: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """Decide whether the candidate may be deployed; raise ``GateRejected`` if not."""
    from model_delivery.validation.gate import decide

    reason = str(rc.conf.get("reason") or "")
    try:
        decision = decide(
            rc.spec.gate, evaluation["metrics"], force=bool(rc.conf.get("force")), reason=reason,
            champion=evaluation.get("champion"), slices=evaluation.get("slices"),
            intervals=(evaluation.get("bootstrap") or {}).get("intervals"),
        )
    except ValueError as exc:
        raise GateRejected(f"{exc}. Fix: trigger again with conf {{\"force\": true, \"reason\": \"...\"}}.") from None
    result = {"decision": decision.to_dict(), "champion": evaluation.get("champion")}
    tags = {"gate.verdict": decision.verdict}
    if decision.forced:
        tags["gate.forced_reason"] = reason
    rc.registry.set_tags(rc.model, candidate["version"], tags)
    rc.log("gate verdict: %s %s", decision.verdict, "; ".join(decision.reasons))
    if not decision.passed:
        raise GateRejected(
            f"gate rejected version {candidate['version']} of {rc.model}: " + "; ".join(decision.reasons), result=result
        )
    return result


def resolve_rollback(rc: ReleaseContext, version: str) -> dict[str, Any]:
    """The version a manual rollback goes to (``previous`` by default), checked before anything changes.

    :raises InvalidConf: an unknown model, an unknown version, or no ``previous`` alias.
    """
    from model_delivery.registry import PREVIOUS, PRODUCTION

    if not (rc.model_dir / "model.yaml").is_file():
        known = sorted(p.name for p in rc.settings.models_dir.iterdir() if (p / "model.yaml").is_file())
        raise InvalidConf(f"unknown model {rc.model!r}. Fix: use one of {known}.")
    versions = {v.version: v for v in rc.registry.versions(rc.model)}
    wanted = (version or PREVIOUS).strip()
    target = rc.registry.alias(rc.model, PREVIOUS) if wanted == PREVIOUS else versions.get(wanted)
    if target is None:
        what = "has no 'previous' version" if wanted == PREVIOUS else f"has no version {wanted!r}"
        raise InvalidConf(f"model {rc.model!r} {what}. Fix: give one of its versions: {sorted(versions, key=int)}.")
    if not rc.store.exists(rc.model, target.digest):
        raise InvalidConf(f"version {target.version} of {rc.model!r} has no artifact in the store ({target.digest}); "
                          "it cannot be deployed. Fix: choose another version.")
    production = rc.registry.alias(rc.model, PRODUCTION)
    no_op = production is not None and production.version == target.version
    if no_op:
        rc.log("version %s is already production: nothing to roll back", target.version)
    return {"model": rc.model, "version": target.version, "digest": target.digest, "uri": target.source,
            "from_version": production.version if production else None, "no_op": no_op,
            "note": f"version {target.version} is already production: nothing to do" if no_op else ""}


def deploy_staging(rc: ReleaseContext, candidate: dict[str, Any]) -> dict[str, Any]:
    """Take the model's deploy lease, then start the candidate beside production, without traffic.

    With the conf's ``dry_run``, the target only reports what it would change (no lease is
    taken: nothing changes) and :class:`DryRunComplete` ends the release there.

    :raises DeployBusy: another run (a release or a manual rollback) is deploying this model.
    """
    if rc.conf.get("dry_run"):
        plan = {"target": rc.target.name, "dry_run": True, **rc.target.plan(rc.candidate(candidate))}
        rc.log("dry run on %s: %s", plan["target"], plan.get("note", ""))
        raise DryRunComplete(f"dry run on the {plan['target']} target: {plan.get('note', '')}; nothing was changed. "
                             "Trigger again without dry_run to deliver.", result=plan)
    lease = rc.ledger.acquire(rc.model, rc.run_id, rc.dag_id, alive=rc.holder_alive)
    settled = None
    if lease.get("took_over"):  # once: a retry of this task after it settled the dead run does not again
        settled = settle_dead_holder(rc, lease["took_over"], lease.get("took_over_dag"))
        rc.ledger.settled(rc.model, rc.run_id)
    check_decisions(rc, candidate)
    with rc.ledger.heartbeating(rc.model, rc.run_id):
        staged = {"target": rc.target.name, **rc.target.stage(rc.candidate(candidate), rc.run_id)}
    return {**staged, "took_over": settled} if settled else staged


def settle_dead_holder(rc: ReleaseContext, run_id: str, dag_id: str | None) -> dict[str, Any]:
    """Complete the journal of a run whose lease was taken over (killed, lost, marked failed), before
    this run changes anything: if its promote moved the aliases, it released, and only its retire is
    done here; otherwise its deployment is rolled back and the aliases put back as they were."""
    dead = ReleaseContext(model=rc.model, run_id=run_id, dag_id=dag_id or "", settings=rc.settings, log=rc.log)
    moved = [e for e in rc.ledger.journal(rc.model, target=REGISTRY, run_id=run_id) if e["action"] == "aliases"]
    if moved and moved[-1]["status"] == "done":
        result = {"run_id": run_id, "finished": "retire", **rc.target.retire(run_id)}
    else:
        result = {"run_id": run_id, "finished": "rollback", **rc.target.rollback(run_id)}
        aliases = _restore_aliases(dead)
        if aliases:
            result["aliases"] = aliases
    rc.log("took over the deploy lease of %s run %s, which no longer runs; settled it: %s", dag_id, run_id, result)
    return result


def check_decisions(rc: ReleaseContext, candidate: dict[str, Any]) -> None:
    """Under the lease: what the run decided before it held it still holds.

    A release was gated against a champion; a rollback resolved its "from" version. If
    production has changed since (another run released or rolled back meanwhile), deploying
    would undo that run's work on a decision about a state that is gone.

    :raises StaleDecision: production is no longer what the decision was taken against.
    """
    from model_delivery.ledger import StaleDecision
    from model_delivery.registry import PRODUCTION

    production = rc.registry.alias(rc.model, PRODUCTION)
    now_serving = production.version if production else None
    if "from_version" in candidate:  # a rollback
        expected, what = candidate["from_version"], "the rollback was resolved"
    else:
        gated = rc.record.load().get("stages", {}).get("gate")
        if gated is None:  # the stage functions called as a plain script (the gate's operator records it)
            return
        champion = (gated.get("result") or {}).get("champion") or {}
        expected, what = champion.get("version"), "the gate compared the candidate"
    if expected != now_serving:
        raise StaleDecision(
            f"production of {rc.model} is version {now_serving} now, but {what} against version {expected}: another "
            "run changed production meanwhile. This run deploys nothing. Fix: trigger it again, so that it "
            "decides against what serves now.")


def smoke(rc: ReleaseContext, candidate: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
    """Golden requests against a deployment; it must answer as expected, from this digest, in budget.

    It speaks the runtime's protocol: the Open Inference Protocol to our model server, the
    OpenAI completions API (golden prompts, TTFT and TPOT under load) to a language model's.
    """
    from model_delivery.runtimes import get_runtime
    from model_delivery.serving_auth import serving_token

    spec = rc.spec
    runtime = get_runtime(spec.serving.runtime)
    token = serving_token(spec.serving.token_conn_id)  # never logged or recorded
    if runtime.protocol == "openai":
        from model_delivery.smoke_lm import load_golden_prompts, run_smoke_lm

        report = run_smoke_lm(
            deployment["url"], spec.name, load_golden_prompts(rc.model_dir / spec.smoke.golden),
            repeats=spec.smoke.repeats, concurrency=spec.smoke.concurrency, ttft_budget_ms=spec.smoke.ttft_budget_ms,
            tpot_budget_ms=spec.smoke.tpot_budget_ms, expect_digest=candidate["digest"],
            served_digest=runtime.served_digest, token=token,
        )
    else:
        from model_delivery.smoke import load_golden, run_smoke

        report = run_smoke(
            deployment["url"], spec.name, load_golden(rc.model_dir / spec.smoke.golden), repeats=spec.smoke.repeats,
            budget_ms=spec.smoke.latency_budget_ms, expect_digest=candidate["digest"], token=token,
            protocol=spec.smoke.protocol, grpc_address=deployment.get("grpc_url"),
        )
    rc.log("smoke against %s (%s): %d requests, %s, passed=%s", report["url"], report.get("protocol", "openai"),
           report["requests"], latency_summary(report.get("latency_ms") or {}), report["passed"])
    if not report["passed"]:
        raise SmokeTestFailed(f"smoke test of {deployment['url']} failed: " + "; ".join(report["failures"]), result=report)
    return report


def approval_request(rc: ReleaseContext) -> str:
    """What the approver reads: verdict, metrics against production, data checks, smoke, report."""
    record = rc.record.load()
    stages = record.get("stages", {})
    build = stages.get("build", {}).get("result") or {}
    evaluation = stages.get("evaluate", {}).get("result") or {}
    decision = (stages.get("gate", {}).get("result") or {}).get("decision") or {}
    smoke_result = stages.get("smoke", {}).get("result") or {}
    base = ((evaluation.get("champion") or {}).get("metrics")) or {}
    lines = [
        f"**{rc.model}** version {build.get('version')} (`{build.get('digest', '')[:19]}…`), "
        f"reason: {rc.conf.get('reason') or record.get('conf', {}).get('reason') or '—'}",
        "",
        f"Gate verdict: **{decision.get('verdict')}**. " + " ".join(decision.get("reasons") or []),
        "",
        "| metric | candidate | production |",
        "|---|---|---|",
    ]
    for name, value in (evaluation.get("metrics") or {}).items():
        lines.append(f"| {name} | {value:.4f} | {base[name]:.4f} |" if name in base else f"| {name} | {value:.4f} | — |")
    lines += ["", f"Smoke test on the staged candidate: passed, {latency_summary(smoke_result.get('latency_ms') or {})}.",
              "", f"Report so far: {rc.record.dir / 'release.json'}"]
    return "\n".join(lines)


def latency_summary(latency: dict[str, Any]) -> str:
    """The smoke test's latency in one phrase: p95 against budget (TTFT and TPOT for a language model)."""
    if "ttft_p95" in latency:
        return (f"p95 time to first token {_ms(latency.get('ttft_p95'))} (budget {latency.get('ttft_budget_p95')} ms), "
                f"p95 time per output token {_ms(latency.get('tpot_p95'))} (budget {latency.get('tpot_budget_p95')} ms), "
                f"{latency.get('concurrency')} streams at once")
    return f"p95 {_ms(latency.get('p95'))} (budget {latency.get('budget_p95')} ms)"


def _ms(value: Any) -> str:
    return f"{value:.1f} ms" if isinstance(value, int | float) else "—"


def deploy_production(rc: ReleaseContext) -> dict[str, Any]:
    """Shift production traffic to the candidate (the previous version stays warm)."""
    rc.hold_lease()
    with rc.ledger.heartbeating(rc.model, rc.run_id):
        return {"target": rc.target.name, **rc.target.shift(rc.run_id)}


def promote(rc: ReleaseContext, candidate: dict[str, Any]) -> dict[str, Any]:
    """Tag the version with this run's lineage, then move the registry aliases (tags first, aliases last).

    The aliases as they were are journaled first, so a rollback of this run puts them back
    (:func:`rollback`). Retiring the previous deployment is the next task (:func:`retire`),
    outside the rollback's path: a failed retire never undoes a verified release.
    """
    from model_delivery.registry import PREVIOUS, PRODUCTION

    rc.hold_lease()
    before = {alias: getattr(rc.registry.alias(rc.model, alias), "version", None) for alias in (PRODUCTION, PREVIOUS)}
    rc.registry.set_tags(rc.model, candidate["version"], {"promoted_by": rc.run_id, **promoted_lineage(candidate)})
    entry = rc.ledger.intend(rc.model, REGISTRY, rc.run_id, "aliases", {"to": candidate["version"]}, before)
    aliases = rc.registry.promote(rc.model, candidate["version"])
    rc.ledger.done(entry)
    return aliases


REGISTRY = "registry"
"""The ledger's name for registry promotion (journal entries ``aliases``, compensated by a rollback)."""


def retire(rc: ReleaseContext) -> dict[str, Any]:
    """After promote: free the previous deployment kept warm for rollback, then give the lease back."""
    with rc.ledger.heartbeating(rc.model, rc.run_id):
        retired = {"target": rc.target.name, **rc.target.retire(rc.run_id)}
    rc.ledger.release(rc.model, rc.run_id)
    return retired


def rollback(rc: ReleaseContext) -> dict[str, Any]:
    """Put back what served before this run (a no-op when this run deployed nothing), and the registry
    aliases its promote moved; then give the lease back.

    A rollback that fails on its last try quarantines the model: it stays locked (the lease is
    kept) until a person checks what serves and runs ``model-delivery unlock``. So does a
    rollback that leaves a fleet serving mixed versions.

    :raises Quarantined: the rollback failed on its last try, or left mixed versions.
    """
    from model_delivery.ledger import Quarantined, quarantine_message

    try:
        with rc.ledger.heartbeating(rc.model, rc.run_id):
            result = {"target": rc.target.name, **rc.target.rollback(rc.run_id)}
    except Exception as exc:
        if not rc.last_try:
            raise
        held = rc.ledger.quarantine(rc.model, rc.run_id, rc.dag_id, f"the rollback failed: {exc}"[:1000])
        raise Quarantined(f"{exc}\n{quarantine_message(rc.model, held['quarantine'])}") from exc
    restored = _restore_aliases(rc)
    if restored:
        result["aliases"] = restored
    if str(result.get("serving") or "").startswith("mixed"):
        held = rc.ledger.quarantine(rc.model, rc.run_id, rc.dag_id, f"the rollback left {result['serving']}")
        raise Quarantined(quarantine_message(rc.model, held["quarantine"]), result=result)
    rc.ledger.release(rc.model, rc.run_id)
    return result


def _restore_aliases(rc: ReleaseContext) -> dict[str, Any] | None:
    """Put the registry aliases back as this run's promote journaled them, if it moved them."""
    entries = [e for e in rc.ledger.journal(rc.model, target=REGISTRY, run_id=rc.run_id) if e["action"] == "aliases"]
    if not entries:
        return None
    before = entries[0]["compensation"]
    rc.registry.set_aliases(rc.model, before)
    for entry in entries:
        if entry["status"] != "undone":
            rc.ledger.undone(entry["id"], "the rollback put the aliases back")
    rc.log("registry aliases of %s put back: %s", rc.model, before)
    return dict(before)
