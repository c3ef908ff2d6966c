"""Our own model server (``include/serving/model_server``): the Open Inference Protocol, for scikit-learn models.

It verifies the artifact against its digest itself before it binds its port (exit code 3 on a
mismatch), reports the digest it serves in the ``X-Model-Digest`` header, and drains on SIGUSR1.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

from model_delivery.runtimes import Runtime, cli_args

if TYPE_CHECKING:
    from collections.abc import Mapping


class ModelServerRuntime(Runtime):
    """``python -m model_server``: one verified artifact over the Open Inference Protocol v2."""

    name: ClassVar[str] = "model_server"
    protocol: ClassVar[str] = "open-inference"
    ready_path: ClassVar[str] = "/v2/health/ready"
    live_path: ClassVar[str] = "/v2/health/live"
    metrics_path: ClassVar[str] = "/metrics"
    drain_signals: ClassVar[bool] = True
    stop_timeout_arg: ClassVar[str | None] = "graceful_timeout"
    token_env: ClassVar[str | None] = "MODEL_SERVER_TOKEN"

    def command(self, *, python: str, artifact: str, digest: str, model: str, version: str, host: str, port: int,
                args: Mapping[str, Any]) -> list[str]:
        return [python, "-m", "model_server", "--artifact", artifact, "--digest", digest, "--model-name", model,
                "--model-version", version, "--host", host, "--port", str(port), *cli_args(args)]

    def served_digest(self, url: str, model: str, timeout: float = 2.0, *, token: str | None = None) -> str | None:
        import httpx

        from model_delivery.serving_auth import auth_headers

        with contextlib.suppress(httpx.HTTPError):  # the readiness path needs no token; sent all the same
            response = httpx.get(f"{url}{self.ready_path}", timeout=timeout, headers=auth_headers(token))
            if response.status_code == 200:
                return response.headers.get("x-model-digest")
        return None

    def ready(self, url: str, model: str, digest: str, timeout: float = 10.0, *,
              token: str | None = None) -> str | None:
        served = self.served_digest(url, model, timeout=min(timeout, 2.0), token=token)
        if served is None:
            return f"{url}{self.ready_path} does not answer 200 yet"
        return None if served == digest else f"{url} serves {served}, not {digest}"
