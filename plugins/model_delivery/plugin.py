"""The Airflow plugin of model-delivery: the "Model releases" page in the Airflow UI, and run notes.

It mounts a FastAPI app on the api-server at ``/model-releases`` (``fastapi_apps``) and adds
"Model releases" to the UI's navigation (``external_views``; shown inside the UI at
``/plugin/model-releases``). Every route requires an Airflow login: see
``model_delivery.page.releases_app``. Its listener (``model_delivery.run_notes``) writes each
release's outcome as its run's note when the scheduler ends the run.

Airflow imports this file in every process (scheduler, workers, DAG processor), so it imports
nothing heavy: the app is built on its first request.
"""

from __future__ import annotations

import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from model_delivery.page import URL_PREFIX
from model_delivery.run_notes import run_notes


class LazyApp:
    """An ASGI app that builds the real one (``factory()``) on its first request."""

    def __init__(self, factory: str) -> None:
        self.factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._app is None:
                from importlib import import_module

                module, _, name = self.factory.partition(":")
                self._app = getattr(import_module(module), name)()
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self._app or self._load()
        await app(scope, receive, send)

    def __repr__(self) -> str:
        return f"LazyApp({self.factory!r})"


releases_app = LazyApp("model_delivery.page.releases_app:create_app")


class ModelDeliveryPlugin(AirflowPlugin):
    """Registers the "Model releases" page and its JSON API."""

    name = "model_delivery"
    listeners = [run_notes]  # the release's outcome as its run note (model_delivery.run_notes)
    fastapi_apps = [{"app": releases_app, "url_prefix": URL_PREFIX, "name": "Model releases"}]
    external_views = [
        {
            "name": "Model releases",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "model-releases",
            "nav_top_level": True,
        }
    ]
