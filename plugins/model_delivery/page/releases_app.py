"""The FastAPI app behind the "Model releases" page and its JSON API, mounted by the Airflow api-server.

Plugin routes are not protected by Airflow by default, so every route here depends on the
core API's own ``get_user``: a request needs a valid Airflow JWT, as a bearer token (from
``POST /auth/token``) or as the ``_token`` cookie the Airflow UI sets at login. Without one
the answer is 401; with an invalid one, 403. A user then sees only the models whose
``release__<model>`` DAG the auth manager lets them read.

FastAPI and Airflow's API modules are imported inside :func:`create_app`, which the plugin
calls on the first request: Airflow imports every plugin file in every process.

No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations,
and ``Request`` is imported inside :func:`create_app`, not at module level.
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from model_delivery.metrics import WINDOWS, human_duration, parse_time
from model_delivery.page import URL_PREFIX

if TYPE_CHECKING:
    from fastapi import FastAPI

    from model_delivery.page.releases_data import Links, PageData

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
STATIC_CACHE = "private, max-age=31536000, immutable"
"""Static files are versioned by path (``vendor/<pkg>-<version>/``); private: they are served behind the login."""
DEFAULT_WINDOW = 30
DAY_SECONDS = 86400.0
SEGMENT_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def fmt_rate(value: float | None, unit: str = "/day") -> str:
    """``0.286/day``, ``2.5/day``, ``4,511/day`` (a young history has a short total time: high rates)."""
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.1f}{unit}" if value >= 1 else f"{value:.3g}{unit}"


def fmt_count_rate(count: int | None, per_day: float | None, observed_seconds: float | None, noun: str) -> str:
    """A rate never extrapolated beyond what was observed: ``3 releases in 27m`` over less than a day, else
    ``2.5/day``."""
    if observed_seconds is not None and 0 < observed_seconds < DAY_SECONDS:
        n = count or 0
        return f"{n} {noun}{'' if n == 1 else 's'} in {human_duration(observed_seconds)}"
    return fmt_rate(per_day)


def fmt_when(value: str | None) -> str:
    """An ISO time as ``2026-11-26 15:25:10 UTC``."""
    when = parse_time(value)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else "—"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def figure_cells(f: dict[str, Any], coverage: dict[str, Any] | None) -> dict[str, str]:
    """One row of the metrics table, in words: a None figure shows why (e.g. "no failure in window")."""
    notes = f.get("notes") or {}
    lead = f.get("lead_time_seconds") or {}
    cov = (coverage or {}).get("coverage")
    return {
        "coverage": fmt_ratio(cov) if cov is not None else (coverage or {}).get("note", "—"),
        "runs": str(f.get("runs", 0)),
        "failures": str(f.get("failures", 0)),
        "failure_rate": notes.get("failure_rate")
        or fmt_count_rate(f.get("failures"), f.get("failure_rate_per_day"), f.get("observed_seconds"), "failure"),
        "mttf": notes.get("mttf") or human_duration(f.get("mttf_seconds")),
        "mttr": notes.get("mttr") or human_duration(f.get("mttr_seconds"))
        + (f" ({f['open_failures']} open)" if f.get("open_failures") else ""),
        "deployment_frequency": notes.get("deployment_frequency")
        or fmt_count_rate(f.get("deployments"), f.get("deployment_frequency_per_day"), f.get("observed_seconds"),
                          "release"),
        "lead_time": notes.get("lead_time") or human_duration(lead.get("median")),
        "change_failure_rate": notes.get("change_failure_rate")
        or f"{fmt_ratio(f.get('change_failure_rate'))} ({f.get('changes_needing_rollback')}/{f.get('changes_deployed')})",
    }


def metrics_view(document: dict[str, Any] | None, window: int, models: list[str]) -> dict[str, Any] | None:
    """The latest metrics for one window, as table rows (overall first, then the visible models)."""
    if not document or str(window) not in document.get("windows", {}):
        return None
    figures = document["windows"][str(window)]
    coverage = document.get("coverage") or {}
    rows = [{"scope": "all models", **figure_cells(figures["overall"], coverage.get("project"))}]
    for model in models:
        if model in figures.get("models", {}):
            rows.append({"scope": model,
                         **figure_cells(figures["models"][model], (coverage.get("models") or {}).get(model))})
    return {"generated_at": document.get("generated_at"), "rows": rows, "airflow": document.get("airflow") or {}}


def static_file(path: str) -> Path | None:
    """The file under ``static/`` that ``path`` names, or None: nothing outside that folder (no ``..``, no
    absolute path, no symlink out of it), no folder, no hidden file."""
    if not path or "\\" in path or "\x00" in path or any(part.startswith(".") for part in path.split("/")):
        return None
    root = STATIC.resolve()
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def render_page(data: "PageData", models: list[str], *, window: int, title: str) -> str:
    """The whole page as HTML (Jinja2, autoescaped). Each model's chart data is embedded as JSON (``tojson``
    escapes ``<``, ``>``, ``&`` and quotes), which the vendored ECharts draws in the browser."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from model_delivery.page.releases_charts import ECHARTS, chart_data, outcome_key, outcome_label

    today = datetime.now(UTC)
    views = []
    for name in models:
        view = data.model(name)
        view["charts"] = chart_data(view, window=window, today=today)
        views.append(view)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["short"] = lambda digest: (digest or "")[:19] + ("…" if digest and len(digest) > 19 else "")
    env.filters["num"] = lambda v: "—" if v is None else f"{v:.4f}"
    env.filters["delta"] = lambda v: "—" if v is None else f"{v:+.4f}"
    env.filters["when"] = fmt_when
    env.filters["outcome"] = outcome_label
    env.filters["outcome_key"] = outcome_key
    return env.get_template("releases.html").render(
        title=title, models=views, metrics=metrics_view(data.metrics(), window, models), window=window,
        windows=WINDOWS, links=data.links, prefix=data.links.prefix, generated=today.isoformat(timespec="seconds"),
        echarts=f"{data.links.prefix}/static/{ECHARTS}",
    )


def fmt_bytes(value: float | None) -> str:
    """``3.6 KiB``, ``1.0 GiB``; an em dash for None."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def render_version(data: "PageData", model: str, version: str, *, against: str | None = None) -> str | None:
    """One version's page, or two versions side by side (``against``); None when a version is unknown."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from model_delivery.page.version_detail import side_by_side, version_detail

    detail = version_detail(data, model, version)
    other = version_detail(data, model, against) if against is not None else None
    if detail is None or (against is not None and other is None):
        return None
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["num"] = lambda v: "—" if v is None else f"{v:.4f}" if isinstance(v, int | float) else str(v)
    env.filters["bytes"] = fmt_bytes
    versions, _ = data.versions(model)
    compare = side_by_side(detail, other) if other is not None else None
    title = f"{model} v{version}" + (f" against v{against}" if against else "")
    return env.get_template("version.html").render(
        title=title, model=model, v=detail, compare=compare, prefix=data.links.prefix,
        others=[mv.version for mv in reversed(versions) if mv.version != version])


def _version_view(request: Any, user: Any, model: str, version: str, *, against: str | None = None,
                  html: bool = False) -> Any:
    """A version (or two, side by side) as HTML or JSON; 404 naming the version the registry does not have."""
    from model_delivery.page.version_detail import side_by_side, version_detail

    data = _page_data(request)
    name = _one_model(data, user, model)
    if html:
        page = render_version(data, name, version, against=against)
        if page is None:
            raise _http_error(404, f"{model} has no version {version!r}" + (f" or {against!r}" if against else ""))
        return page
    left = version_detail(data, name, version)
    right = version_detail(data, name, against) if against is not None else None
    if left is None or (against is not None and right is None):
        raise _http_error(404, f"{model} has no version {version!r}" + (f" or {against!r}" if against else ""))
    return side_by_side(left, right) if right is not None else left


def _links(request: Any) -> "Links":
    from model_delivery.page.releases_data import Links

    root = str(request.scope.get("root_path", "")).rstrip("/")
    airflow = root.removesuffix(URL_PREFIX) if root.endswith(URL_PREFIX) else ""
    return Links(prefix=root or URL_PREFIX, airflow=airflow)


def _page_data(request: Any) -> "PageData":
    from model_delivery.page.releases_data import PageData
    from model_delivery.settings import get_settings

    return PageData(get_settings(), _links(request))


def _http_error(status: int, detail: str) -> Exception:
    from fastapi import HTTPException

    return HTTPException(status, detail)


def visible_models(data: "PageData", user: Any) -> list[str]:
    """The models whose ``release__<model>`` DAG the auth manager lets this user read."""
    from airflow.api_fastapi.app import get_auth_manager

    models = data.models()
    allowed = get_auth_manager().filter_authorized_dag_ids(
        dag_ids={f"release__{m}" for m in models}, user=user, method="GET")
    return [m for m in models if f"release__{m}" in allowed]


def _one_model(data: "PageData", user: Any, model: str) -> str:
    if model not in data.models():
        raise _http_error(404, f"unknown model {model!r}")
    if model not in visible_models(data, user):
        raise _http_error(403, f"you may not read release__{model}")
    return model


def _window(window: int) -> int:
    if window not in WINDOWS:
        raise _http_error(422, f"window must be one of {list(WINDOWS)}")
    return window


def _release_file(request: Any, user: Any, model: str, segment: str, name: str) -> str:
    data = _page_data(request)
    _one_model(data, user, model)
    if not segment or set(segment) - SEGMENT_CHARS or segment in (".", ".."):
        raise _http_error(404, "no such release")
    path = data.report_path(model, segment, name)
    if not path.exists():
        raise _http_error(404, f"release {segment} of {model} has no {name}")
    return str(path.read_text())


def _models_summary(request: Any, user: Any) -> dict[str, Any]:
    data = _page_data(request)
    out = []
    for name in visible_models(data, user):
        view = data.model(name)
        out.append({k: view[k] for k in ("model", "url", "dag_id", "target", "production", "previous")}
                   | {"versions": len(view["versions"]), "releases": len(view["releases"]),
                      "latest_release": view["releases"][0] if view["releases"] else None})
    return {"models": out}


def _metrics_for(request: Any, user: Any) -> dict[str, Any]:
    """The latest metrics document, without the models this user may not read."""
    data = _page_data(request)
    document = data.metrics()
    if document is None:
        raise _http_error(404, "no delivery metrics yet: trigger the delivery_metrics DAG")
    allowed = set(visible_models(data, user))
    document["models"] = [m for m in document.get("models", []) if m in allowed]
    document["runs"] = [r for r in document.get("runs", []) if r.get("model") in allowed]
    for window in document.get("windows", {}).values():
        window["models"] = {m: f for m, f in window.get("models", {}).items() if m in allowed}
    coverage = document.get("coverage") or {}
    coverage["models"] = {m: c for m, c in (coverage.get("models") or {}).items() if m in allowed}
    return document


async def _sign_in_first(request: Any, exc: Any) -> Any:
    """A browser that is not signed in (it asks for HTML) goes to Airflow's login, then back here; an API client
    keeps the 401."""
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import RedirectResponse

    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(login_url(request), status_code=303)
    return await http_exception_handler(request, exc)


def login_url(request: Any) -> str:
    """Airflow's login page, with this page (path and query, never another host) as where to come back."""
    from airflow.api_fastapi.app import get_auth_manager

    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return get_auth_manager().get_url_login(next_url=back)


def _version_routes(app: Any, Request: Any, UserDep: Any, HTMLResponse: Any) -> None:  # noqa: N803 - FastAPI types
    """A version's page and JSON, and two versions side by side."""

    @app.get("/models/{model}/versions/{version}", response_class=HTMLResponse)
    def version_page(request: Request, model: str, version: str, user: UserDep) -> str:
        return _version_view(request, user, model, version, html=True)

    @app.get("/models/{model}/compare", response_class=HTMLResponse)
    def compare_page(request: Request, model: str, a: str, b: str, user: UserDep) -> str:
        return _version_view(request, user, model, a, against=b, html=True)

    @app.get("/api/models/{model}/versions/{version}")
    def api_version(request: Request, model: str, version: str, user: UserDep) -> Any:
        return _version_view(request, user, model, version)

    @app.get("/api/models/{model}/compare")
    def api_compare(request: Request, model: str, a: str, b: str, user: UserDep) -> Any:
        return _version_view(request, user, model, a, against=b)


def create_app() -> "FastAPI":
    """The app; every route requires an authenticated Airflow user (``get_user`` of the core API)."""
    import json

    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    UserDep = Annotated[Any, Depends(get_user)]
    WindowQuery = Annotated[int, Query(description=f"days: one of {list(WINDOWS)}")]
    app = FastAPI(title="Model releases", dependencies=[Depends(get_user)],
                  docs_url=None, redoc_url=None, openapi_url=None)

    app.add_exception_handler(StarletteHTTPException, _sign_in_first)
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: UserDep, window: WindowQuery = DEFAULT_WINDOW) -> str:
        data = _page_data(request)
        return render_page(data, visible_models(data, user), window=_window(window), title="Model releases")

    @app.get("/models/{model}", response_class=HTMLResponse)
    def model_page(request: Request, model: str, user: UserDep, window: WindowQuery = DEFAULT_WINDOW) -> str:
        data = _page_data(request)
        return render_page(data, [_one_model(data, user, model)], window=_window(window),
                           title=f"Model releases: {model}")

    @app.get("/models/{model}/releases/{segment}/report", response_class=HTMLResponse)
    def report(request: Request, model: str, segment: str, user: UserDep) -> str:
        return _release_file(request, user, model, segment, "report.html")

    @app.get("/models/{model}/releases/{segment}/release.json")
    def record(request: Request, model: str, segment: str, user: UserDep) -> Any:
        return JSONResponse(json.loads(_release_file(request, user, model, segment, "release.json")))

    @app.get("/static/{path:path}")
    def static(path: str, user: UserDep) -> FileResponse:
        """Only files under ``static/`` (the vendored charting library), cached for a year: a new version is a
        new path."""
        import mimetypes

        found = static_file(path)
        if found is None:
            raise _http_error(404, "no such static file")
        media = "text/javascript" if found.suffix == ".js" else (mimetypes.guess_type(found.name)[0] or "text/plain")
        return FileResponse(found, media_type=media,
                            headers={"Cache-Control": STATIC_CACHE, "X-Content-Type-Options": "nosniff"})

    @app.get("/api/models")
    def api_models(request: Request, user: UserDep) -> dict[str, Any]:
        return _models_summary(request, user)

    @app.get("/api/models/{model}")
    def api_model(request: Request, model: str, user: UserDep) -> dict[str, Any]:
        data = _page_data(request)
        return data.model(_one_model(data, user, model))

    @app.get("/api/metrics")
    def api_metrics(request: Request, user: UserDep) -> dict[str, Any]:
        return _metrics_for(request, user)

    _version_routes(app, Request, UserDep, HTMLResponse)

    return app
