"""Reading the release records that the store keeps under each model's ``releases/`` folder."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_delivery.store.artifacts import ArtifactStore

RECORD = "release.json"


def read_records(store: ArtifactStore, model: str) -> list[dict[str, Any]]:
    """Every ``release.json`` of a model in the store (unreadable ones are skipped)."""
    releases = store.layout.releases(model)
    if not releases.exists():
        return []
    records = []
    for run_dir in releases.iterdir():
        try:
            records.append(json.loads((run_dir / RECORD).read_text()))
        except (OSError, ValueError):
            continue
    return records


def latest_record(store: ArtifactStore, model: str) -> dict[str, Any] | None:
    """The record of the model's newest finished release (or newest at all), or None."""
    records = read_records(store, model)
    return max(records, key=lambda r: r.get("finished_at") or "") if records else None
