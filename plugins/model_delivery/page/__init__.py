"""The "Model releases" page in the Airflow UI (an Airflow 3 plugin: ``model_delivery.plugin``).

This module is imported by release records for :func:`page_url`, so it stays tiny: the app is in
``releases_app``, its data in ``releases_data``, the charts' data in ``releases_charts``
(drawn in the browser by the ECharts vendored under ``static/vendor/``).
"""

from __future__ import annotations

import os
from urllib.parse import quote

URL_PREFIX = "/model-releases"


def airflow_base_url() -> str:
    """Where users reach the Airflow UI: ``MODEL_DELIVERY_UI_URL``, else ``[api] base_url``, else host and port."""
    explicit = os.environ.get("MODEL_DELIVERY_UI_URL")
    if explicit:
        return explicit.rstrip("/")
    try:
        from airflow.configuration import conf
    except ImportError:  # outside Airflow (benchmarks): the default of `make up`
        return "http://localhost:8080"
    base = conf.get("api", "base_url", fallback="") or ""
    if base:
        return base.rstrip("/")
    host = conf.get("api", "host", fallback="") or ""
    port = conf.get("api", "port", fallback="8080") or "8080"
    return f"http://{'localhost' if host in ('', '0.0.0.0', '::') else host}:{port}"


def page_url(model: str | None = None, run_id: str | None = None) -> str:
    """The page (``/model-releases/``), a model's section, or a release's row on it."""
    from model_delivery.store import safe_segment

    url = f"{airflow_base_url()}{URL_PREFIX}/"
    if model:
        url += f"models/{quote(model)}"
        if run_id:
            url += f"#run-{safe_segment(run_id)}"
    return url
