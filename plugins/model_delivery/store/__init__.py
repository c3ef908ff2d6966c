"""The artifact store: the only code that knows where things live in it.

- :mod:`~model_delivery.store.layout`: every path (blobs, manifests, release records, ...), and
  where records live (:func:`~model_delivery.store.layout.records_location`).
- :mod:`~model_delivery.store.artifacts`: blobs and manifests; put, verify, fetch, migrate, gc.
- :mod:`~model_delivery.store.oci_store`: the same store in an OCI registry (an ``oci://`` root),
  through :mod:`~model_delivery.store.oci`.
- :mod:`model_server.transfer` (shipped with the model server, which hosts use to pull): parallel verified
  copies, links, progress.
- :mod:`~model_delivery.store.records`: reading the release records kept in the store.

:func:`open_store` picks the backend from the root's scheme: the one place that does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from model_delivery.store.artifacts import ArtifactStore, GarbageReport, StoredArtifact
from model_delivery.store.layout import (
    StoreLayout,
    UnsupportedByStore,
    is_registry,
    records_location,
    safe_segment,
)

if TYPE_CHECKING:
    from pathlib import Path


def open_store(root: str, conn_id: str | None = None, *, home: str | Path, records_root: str | None = None,
               link: str | None = None) -> ArtifactStore:
    """The artifact store at ``root``: an :class:`ArtifactStore` over files (``file://``, ``s3://``, ``gs://``),
    or an :class:`~model_delivery.store.oci_store.OciArtifactStore` for an ``oci://host[:port]/repository``.

    :param home: ``MODEL_DELIVERY_HOME`` (an ``oci://`` store's records default to ``file://<home>/records``).
    :param records_root: ``MODEL_DELIVERY_RECORDS_ROOT``, if set (:func:`~model_delivery.store.layout.records_location`).
    :raises ValueError: a malformed root or records root, naming the setting and the fix.
    """
    records, records_conn = records_location(root, conn_id, home, records_root)
    if is_registry(root):
        from model_delivery.store.oci_store import OciArtifactStore

        return OciArtifactStore(root, conn_id, records=records, records_conn_id=records_conn, link=link)
    return ArtifactStore(root, conn_id, link=link, records=None if records == root else records,
                         records_conn_id=records_conn)


__all__ = ["ArtifactStore", "GarbageReport", "StoreLayout", "StoredArtifact", "UnsupportedByStore", "open_store",
           "safe_segment"]
