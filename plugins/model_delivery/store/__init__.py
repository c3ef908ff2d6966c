"""The artifact store: the only code that knows where things live in it.

- :mod:`~model_delivery.store.layout`: every path (blobs, manifests, release records, ...).
- :mod:`~model_delivery.store.artifacts`: blobs and manifests; put, verify, fetch, migrate, gc.
- :mod:`model_server.transfer` (shipped with the model server, which hosts use to pull): parallel verified
  copies, links, progress.
- :mod:`~model_delivery.store.records`: reading the release records kept in the store.
"""

from __future__ import annotations

from model_delivery.store.artifacts import ArtifactStore, GarbageReport, StoredArtifact
from model_delivery.store.layout import StoreLayout, safe_segment

__all__ = ["ArtifactStore", "GarbageReport", "StoreLayout", "StoredArtifact", "safe_segment"]
