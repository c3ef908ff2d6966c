"""What the page shows about one version, and about two side by side.

- build: params (the version's MLflow run), lineage (git sha, spec digest, each data set's sha256), the
  build environment, the pickle scan;
- serving: the runtime and its input/output schema (the artifact's ``serving.json``);
- files: each file of the artifact's manifest with its size, and whether a signature is kept beside it;
- checks: the gate table and the smoke (and verify) results, LM latency included;
- the report of the run that produced the state shown.

Plain data in, JSON-able dicts out; the store and the registry are read through :class:`PageData`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from model_delivery.page.releases_data import shown_run

if TYPE_CHECKING:
    from model_delivery.page.releases_data import PageData


def _result(record: dict[str, Any] | None, stage: str) -> dict[str, Any]:
    return (((record or {}).get("stages") or {}).get(stage) or {}).get("result") or {}


def lineage(record: dict[str, Any] | None) -> dict[str, Any]:
    """Where the version came from, from its build's result."""
    build = _result(record, "build")
    env = build.get("build_env") or {}
    return {
        "git_sha": build.get("git_sha"),
        "spec_digest": build.get("spec_digest"),
        "data": {name: {"sha256": d.get("sha256"), "size_bytes": d.get("size_bytes"), "format": d.get("format")}
                 for name, d in sorted((build.get("data") or {}).items())},
        "python": (env.get("python") or {}).get("version"),
        "libraries": env.get("libraries") or {},
        "pickle_scan": (build.get("pickle_scan") or {}).get("verdict"),
    }


def checks(record: dict[str, Any] | None) -> dict[str, Any]:
    """The gate table and the smoke results of the run shown."""
    gate = (record or {}).get("gate") or {}
    smoke = {stage: {"passed": r.get("passed"), "requests": r.get("requests"), "latency_ms": r.get("latency_ms"),
                     "cases": [{"name": c.get("name"), "ok": c.get("ok"), "problems": c.get("problems") or []}
                               for c in r.get("cases") or []],
                     "failures": r.get("failures") or []}
             for stage in ("smoke", "verify") if (r := _result(record, stage))}
    return {"verdict": gate.get("verdict"), "gate": gate.get("checks") or [], "gate_reasons": gate.get("reasons") or [],
            "smoke": smoke}


def files_changed(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """``path -> {sha256, size}`` of two versions: what was added, removed, changed and kept from a to b."""
    return {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "changed": sorted(p for p in set(a) & set(b) if a[p].get("sha256") != b[p].get("sha256")),
        "same": sorted(p for p in set(a) & set(b) if a[p].get("sha256") == b[p].get("sha256")),
    }


def side_by_side(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Two version details as rows: metrics, params and data digests by name, and the files that changed."""
    def rows(key: str, pick: Any = lambda value: value) -> list[dict[str, Any]]:
        a, b = pick(left).get(key) or {}, pick(right).get(key) or {}
        return [{"name": name, "a": a.get(name), "b": b.get(name), "same": a.get(name) == b.get(name)}
                for name in sorted(set(a) | set(b))]

    def data(detail: dict[str, Any]) -> dict[str, Any]:
        return {"data": {name: d.get("sha256") for name, d in (detail["lineage"].get("data") or {}).items()}}

    return {
        "a": left["version"], "b": right["version"],
        "metrics": rows("metrics"),
        "params": rows("params"),
        "data": rows("data", data),
        "lineage": [{"name": key, "a": left["lineage"].get(key), "b": right["lineage"].get(key),
                     "same": left["lineage"].get(key) == right["lineage"].get(key)}
                    for key in ("git_sha", "spec_digest")],
        "files": files_changed(left["files_by_path"], right["files_by_path"]),
    }


def version_detail(data: PageData, model: str, version: str) -> dict[str, Any] | None:
    """Everything the page knows of one version; None when the registry has no such version."""
    versions, note = data.versions(model)
    mv = next((v for v in versions if v.version == version), None)
    if mv is None:
        return None
    mine = [r for r in data.records(model) if (r.get("artifact") or {}).get("version") == version]  # newest first
    record = shown_run(mine, mv.tags.get("run_id"))  # the report, the outcome: what made the state shown
    built = next((r for r in mine if r.get("run_id") == mv.tags.get("run_id")), None) or next(
        (r for r in reversed(mine) if _result(r, "build")), None)  # lineage: the run that built it
    judged = next((r for r in mine if (r.get("gate") or {}).get("checks")), None) or built  # gate and smoke
    try:
        params = data.registry.params(mv)
    except Exception as exc:  # noqa: BLE001 - the rest of the page still shows
        params, note = {}, f"params unavailable: {type(exc).__name__}: {exc}"
    files, serving, problem = _artifact(data, model, mv.digest)
    spec = data.specs.get(model)
    return {
        "model": model,
        "version": version,
        "digest": mv.digest,
        "aliases": sorted(mv.aliases),
        "metrics": {k.removeprefix("metric."): float(v) for k, v in mv.tags.items() if k.startswith("metric.")},
        "params": params,
        "lineage": lineage(built),
        "serving": {"runtime": spec.serving.runtime if spec else None, **serving},
        "files": files,
        "files_by_path": {f["path"]: {"sha256": f["sha256"], "size": f["size"]} for f in files},
        "size_bytes": sum(f["size"] for f in files),
        "signature": {"mode": spec.signing.mode if spec else None, "bundle": _has_signature(data, model, mv.digest)},
        "checks": checks(judged),
        "checked_by": (judged or {}).get("run_id"),
        "run_id": (record or {}).get("run_id"),
        "outcome": (record or {}).get("outcome"),
        "report_url": data.links.report(model, str(record["run_id"])) if record else None,
        "airflow_url": data.links.airflow_run(record.get("dag_id"), str(record["run_id"])) if record else None,
        "notes": [n for n in (note, problem) if n],
    }


def _artifact(data: PageData, model: str, digest: str | None) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """The artifact's files (from its verified manifest) and its ``serving.json`` (runtime, inputs, outputs)."""
    if not digest:
        return [], {}, "the version names no artifact digest"
    try:
        manifest = data.store.read_manifest(model, digest)
    except Exception as exc:  # noqa: BLE001 - e.g. collected by gc: say so
        return [], {}, f"artifact not readable in the store: {exc}"
    files = [{"path": str(e["path"]), "size": int(e["size"]), "sha256": str(e["sha256"])}
             for e in manifest.get("files") or []]
    serving: dict[str, Any] = {}
    entry = next((e for e in manifest.get("files") or [] if e.get("path") == "serving.json"), None)
    if entry is not None:
        try:
            doc = json.loads(data.store.locate(model, digest, entry).read_text())
            serving = {"flavor": doc.get("flavor"), "inputs": doc.get("inputs") or [],
                       "outputs": doc.get("outputs") or [], "labels": doc.get("labels") or []}
        except Exception as exc:  # noqa: BLE001
            return files, {}, f"serving.json not readable: {exc}"
    return files, serving, None


def _has_signature(data: PageData, model: str, digest: str | None) -> bool | None:
    if not digest:
        return None
    try:
        return bool(data.store.layout.signature(model, digest).exists())
    except Exception:  # noqa: BLE001 - a store that cannot say
        return None
