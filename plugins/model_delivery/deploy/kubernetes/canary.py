"""The canary's metric check: its error ratio, read from the model server's own /metrics."""

from __future__ import annotations

from typing import Any

from model_delivery.exceptions import DeployFailed

REQUESTS = "model_server_requests_total"
INFO = "model_server_model_info"


def parse_metrics(text: str) -> dict[str, Any]:
    """Requests and 5xx answers by status code, and the digest the server reports."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = 0.0
    digest = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS:
                requests += sample.value
                if str(sample.labels.get("status_code", "")).startswith("5"):
                    errors += sample.value
            elif sample.name == INFO:
                digest = sample.labels.get("digest")
    return {"requests": int(requests), "errors": int(errors), "digest": digest}


def error_ratio(url: str, digest: str, *, min_requests: int) -> dict[str, Any]:
    """Read ``url``/metrics; the answer must come from ``digest``. ``ratio`` is None below ``min_requests``."""
    import httpx

    try:
        response = httpx.get(f"{url}/metrics", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise DeployFailed(f"cannot read the canary's metrics at {url}/metrics: {exc}") from None
    found = parse_metrics(response.text)
    if found["digest"] != digest:
        raise DeployFailed(f"{url}/metrics reports digest {found['digest']}, not the canary's {digest}: "
                           "the staging_url does not reach the canary")
    ratio = found["errors"] / found["requests"] if found["requests"] >= max(min_requests, 1) else None
    return {**found, "url": url, "ratio": ratio, "min_requests": min_requests}
