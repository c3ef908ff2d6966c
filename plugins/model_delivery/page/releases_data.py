"""What the "Model releases" page and its JSON API show, gathered from where it lives.

- the registry (MLflow): versions, the ``production``/``previous`` aliases, ``metric.*`` tags;
- the release records in the artifact store: gate verdicts, metrics against the champion,
  deployments, reports;
- the deploy state (the local target's serving state in the deployment ledger): what serves now;
- the latest delivery metrics (``<artifact root>/_delivery_metrics/latest.json``).

Plain data in, plain JSON-able dicts out; no web framework here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from model_delivery.metrics import parse_time, stage_end
from model_delivery.settings import OpensStores
from model_delivery.store import safe_segment

if TYPE_CHECKING:
    from model_delivery.settings import Settings
    from model_delivery.spec import ModelSpec


def _iso(value: Any) -> str | None:
    when = stage_end(value) if isinstance(value, dict) else parse_time(value)
    return when.isoformat(timespec="seconds") if when else None


@dataclass
class Links:
    """URLs on the page: ``prefix`` is where the plugin is mounted, ``airflow`` the UI's root."""

    prefix: str = "/model-releases"
    airflow: str = ""

    def model(self, model: str) -> str:
        return f"{self.prefix}/models/{quote(model)}"

    def report(self, model: str, run_id: str) -> str:
        return f"{self.prefix}/models/{quote(model)}/releases/{safe_segment(run_id)}/report"

    def record(self, model: str, run_id: str) -> str:
        return f"{self.prefix}/models/{quote(model)}/releases/{safe_segment(run_id)}/release.json"

    def airflow_run(self, dag_id: str | None, run_id: str) -> str | None:
        return f"{self.airflow}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}" if dag_id else None


def release_row(record: dict[str, Any], links: Links) -> dict[str, Any]:
    """One release or rollback run as the page lists it."""
    stages: dict[str, dict[str, Any]] = record.get("stages") or {}
    model, run_id = str(record.get("model")), str(record.get("run_id"))
    artifact = record.get("artifact") or {}
    resolve = (stages.get("resolve") or {}).get("result") or {}
    deployments = [
        {"stage": name, "target": (stages[name].get("result") or {}).get("target"),
         "url": (stages[name].get("result") or {}).get("url"), "at": _iso(stages[name])}
        for name in ("deploy_staging", "deploy_production")
        if (stages.get(name) or {}).get("status") == "success"
    ]
    rollback = stages.get("rollback") or {}
    rolled_back = rollback.get("status") == "success" and (rollback.get("result") or {}).get("action") not in (None, "none")
    approve = stages.get("approve") or {}
    return {
        "model": model,
        "run_id": run_id,
        "anchor": f"run-{safe_segment(run_id)}",
        "kind": "rollback" if "resolve" in stages else "release",
        "dag_id": record.get("dag_id"),
        "outcome": record.get("outcome") or "in progress",
        "reasons": record.get("reasons") or [],
        "version": artifact.get("version") or resolve.get("version"),
        "from_version": resolve.get("from_version"),
        "digest": artifact.get("digest") or resolve.get("digest"),
        "gate": (record.get("gate") or {}).get("verdict"),
        "conf": record.get("conf") or {},
        "triggered_by": record.get("triggered_by") or approve.get("triggered_by"),
        "reason": str((record.get("conf") or {}).get("reason") or ""),
        "approved_by": (approve.get("result") or {}).get("by") if approve.get("status") == "success" else None,
        "created_at": _iso(record.get("created_at")),
        "finished_at": _iso(record.get("finished_at")),
        "deployments": deployments,
        "promoted_at": _iso(stages["promote"]) if (stages.get("promote") or {}).get("status") == "success" else None,
        "rolled_back_at": _iso(rollback) if rolled_back else None,
        "report_url": links.report(model, run_id),
        "record_url": links.record(model, run_id),
        "airflow_url": links.airflow_run(record.get("dag_id"), run_id),
    }


def versus_champion(record: dict[str, Any]) -> dict[str, Any]:
    """The candidate's metrics against the production version it was judged against."""
    evaluation = ((record.get("stages") or {}).get("evaluate") or {}).get("result") or {}
    champion = evaluation.get("champion") or {}
    base = champion.get("metrics") or {}
    metrics = evaluation.get("metrics") or record.get("metrics") or {}
    return {
        "champion_version": champion.get("version"),
        "metrics": [
            {"name": name, "value": value, "champion": base.get(name),
             "delta": (value - base[name]) if isinstance(base.get(name), int | float) else None}
            for name, value in metrics.items()
        ],
    }


def _newest_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: str(r.get("created_at") or ""), reverse=True)


def version_rows(versions: list[Any], records: list[dict[str, Any]], serving: dict[str, Any],
                 links: Links) -> list[dict[str, Any]]:
    """Each registered version, newest first, with what the records and the deploy state say about it."""
    rows = []
    for mv in reversed(versions):
        mine = _newest_first([r for r in records if (r.get("artifact") or {}).get("version") == mv.version])
        judged = next((r for r in mine if ((r.get("stages") or {}).get("evaluate") or {}).get("result")), None)
        serving_roles = [role for role, slot in serving.get("slots", {}).items()
                         if slot and str(slot.get("version")) == mv.version]
        built = shown_run(mine, mv.tags.get("run_id"))
        rows_of = [(r, release_row(r, links)) for r in mine]
        deployments = [{**d, "run_id": r.get("run_id"), "live": d["stage"] == "deploy_production" and "active" in serving_roles}
                       for r, row in rows_of for d in row["deployments"] if _deployment_stands(r, d["stage"])]
        promoted = [row["promoted_at"] for _, row in rows_of]
        rows.append({
            "version": mv.version,
            "aliases": sorted(mv.aliases),
            "digest": mv.digest,
            "gate": mv.tags.get("gate.verdict") or ((judged or {}).get("gate") or {}).get("verdict"),
            "metrics": {k.removeprefix("metric."): float(v) for k, v in mv.tags.items() if k.startswith("metric.")},
            "versus_champion": versus_champion(judged) if judged else None,
            "built_by": built.get("run_id") if built else mv.tags.get("run_id"),
            "report_url": links.report(str(built["model"]), str(built["run_id"])) if built else None,
            "airflow_url": links.airflow_run(built.get("dag_id"), str(built["run_id"])) if built else None,
            "deployments": deployments,
            "promoted_at": max((p for p in promoted if p), default=None),
            "serving": serving_roles,
        })
    return rows


def shown_run(records: list[dict[str, Any]], registered_by: str | None) -> dict[str, Any] | None:
    """The run whose report explains the state a version is shown in (``records`` newest first).

    The newest run that promoted it (a version built by a run that rolled it back, then released by a
    later one, links to the release); else the run that registered it; else its newest run.
    """
    promoted = next((r for r in records if ((r.get("stages") or {}).get("promote") or {}).get("status") == "success"),
                    None)
    return promoted or next((r for r in records if r.get("run_id") == registered_by), None) or (
        records[0] if records else None)


def _deployment_stands(record: dict[str, Any], stage: str) -> bool:
    """Whether a deployment of this run still describes the version: production of a released run, or any stage
    of a run still in progress. A staging server of a finished run, or production of a run rolled back, is gone."""
    outcome = record.get("outcome")
    if not outcome:
        return True
    return stage == "deploy_production" and outcome == "released"


def version_trend(versions: list[Any], metric: str | None, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per registered version that has ``metric`` (its registry tag), oldest version first; ``at`` is
    when the run that registered it finished. The production version is marked by its alias, not by a run."""
    if not metric:
        return []
    finished = {str(r.get("run_id")): _iso(r.get("finished_at")) for r in records}
    points = []
    for mv in versions:
        value = mv.tags.get(f"metric.{metric}")
        if value is None:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        points.append({"version": mv.version, "value": number, "at": finished.get(str(mv.tags.get("run_id"))),
                       "production": "production" in mv.aliases})
    return sorted(points, key=lambda p: int(p["version"]) if str(p["version"]).isdigit() else 0)


def deploy_state(spec: ModelSpec | None, settings: Settings) -> dict[str, Any]:
    """What the deploy target says serves now (the local target's state in the ledger; others: the target's name)."""
    if spec is None:
        return {"target": None, "slots": {}}
    target = spec.deploy.target
    if target != "local" or spec.deploy.local is None:
        return {"target": target, "slots": {}, "note": f"the {target} target's state is not read by the page"}
    state = settings.open_ledger().state(spec.name, "local")
    front = f"http://{spec.deploy.local.host}:{spec.deploy.local.port}"
    # A link that answers: the model's metadata, or (when the servers need a token) the open readiness probe.
    probe = "/v2/health/ready" if spec.serving.token_conn_id else f"/v2/models/{quote(spec.name)}"
    slots = {}
    for role in ("active", "standby"):
        slot = state.get(role)
        if slot:
            slots[role] = {"version": slot.get("version"), "digest": slot.get("digest"), "url": slot.get("url"),
                           "since": _iso(slot.get("shifted_at") or slot.get("started_at"))}
    return {"target": "local", "front_url": front, "front_link": front + probe if slots.get("active") else None,
            "slots": slots}


class PageData(OpensStores):
    """Reads everything the page shows, for the models a user may see."""

    def __init__(self, settings: Settings, links: Links | None = None) -> None:
        self.settings = settings
        self.links = links or Links()

    @cached_property
    def specs(self) -> dict[str, ModelSpec]:
        from model_delivery.spec import discover_specs

        return discover_specs(self.settings.models_dir)[0]

    def models(self) -> list[str]:
        from model_delivery.metrics import store_models

        return sorted(set(self.specs) | set(store_models(self.store)))

    def _registry_missing(self) -> bool:
        from pathlib import Path

        uri = self.settings.tracking_uri
        return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()

    def versions(self, model: str) -> tuple[list[Any], str | None]:
        """The registered versions, each with its aliases (a registry search does not return them)."""
        from dataclasses import replace

        from model_delivery.registry import PREVIOUS, PRODUCTION

        if self._registry_missing():
            return [], None
        try:
            versions = self.registry.versions(model)
            aliases: dict[str, list[str]] = {}
            for alias in (PRODUCTION, PREVIOUS):
                found = self.registry.alias(model, alias)
                if found is not None:
                    aliases.setdefault(found.version, []).append(alias)
        except Exception as exc:  # noqa: BLE001 - the page still shows the records
            return [], f"registry unavailable: {type(exc).__name__}: {exc}"
        return [replace(v, aliases=sorted(set(v.aliases) | set(aliases.get(v.version, [])))) for v in versions], None

    def records(self, model: str) -> list[dict[str, Any]]:
        from model_delivery.metrics import read_records

        return _newest_first(read_records(self.store, model))

    def model(self, model: str) -> dict[str, Any]:
        """Everything about one model: versions with aliases, releases, deployment, metric trend."""
        versions, registry_note = self.versions(model)
        records = self.records(model)
        spec = self.specs.get(model)
        serving = deploy_state(spec, self.settings)
        releases = [release_row(r, self.links) for r in records]
        primary = spec.evaluation.metrics[0] if spec and spec.evaluation.metrics else None
        production = next((v.version for v in versions if "production" in v.aliases), None)
        return {
            "model": model,
            "description": spec.description.strip() if spec else "",
            "url": self.links.model(model),
            "dag_id": spec.dag_id if spec else f"release__{model}",
            "target": serving.get("target"),
            "serving": serving,
            "production": production,
            "previous": next((v.version for v in versions if "previous" in v.aliases), None),
            "primary_metric": primary,
            "versions": version_rows(versions, records, serving, self.links),
            "releases": releases,
            "trend": version_trend(versions, primary, records),
            "registry_note": registry_note,
        }

    def metrics(self) -> dict[str, Any] | None:
        from model_delivery.metrics import read_latest

        return read_latest(self.store)

    def report_path(self, model: str, segment: str, name: str) -> Any:
        return self.store.layout.release_file(model, segment, name)
