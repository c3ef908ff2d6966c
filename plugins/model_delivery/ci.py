"""Trigger a release through the Airflow REST API and wait for it: the command CI calls.

    model-delivery release <model> [--reason R] [--force] [--dry-run] [--conf JSON] [--wait] [--timeout S]

Settings come from the environment (or flags): ``AIRFLOW_API_URL`` (default
http://localhost:8080), and either ``AIRFLOW_API_TOKEN`` or ``AIRFLOW_API_USERNAME`` +
``AIRFLOW_API_PASSWORD`` (exchanged for a token at ``/auth/token``). The token is never
printed.

Exit codes: 0 released (or no change), 1 the release failed or was rolled back,
2 the gate (or the approver) rejected it, 3 a usage or connection error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

EXIT_RELEASED, EXIT_FAILED, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2, 3
TERMINAL = ("success", "failed")


class UsageError(Exception):
    """Bad arguments, unknown model, unreachable or refusing API: exit code 3."""


def _client(url: str, token: str | None, username: str | None, password: str | None) -> Any:
    import httpx

    if not token:
        if not (username and password):
            raise UsageError("no credentials: set AIRFLOW_API_TOKEN, or AIRFLOW_API_USERNAME and AIRFLOW_API_PASSWORD")
        try:
            response = httpx.post(f"{url}/auth/token", json={"username": username, "password": password}, timeout=30)
        except httpx.HTTPError as exc:
            raise UsageError(f"cannot reach the Airflow API at {url}: {exc}") from None
        if response.status_code not in (200, 201):
            raise UsageError(f"login to {url} refused (HTTP {response.status_code}): check the username and password")
        token = response.json()["access_token"]
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


RETRIES = 5
"""Retries of a call the api-server answered with a 5xx (or dropped mid-answer)."""
BACKOFF = 1.0
"""Seconds before the first retry, doubled for each next one: 1, 2, 4, 8, 16."""


def _call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    """One API call. A 5xx or a dropped answer is retried with exponential backoff, and each retry is said on stderr.

    The api-server of Airflow on SQLite answers 500 ("Database error") while another writer holds the
    database lock, for example when two runs are triggered in the same second. Creating a run is made
    safe to retry by its client-chosen ``dag_run_id`` (see :func:`trigger`).
    """
    import httpx

    attempts = RETRIES + 1
    for attempt in range(1, attempts + 1):
        problem = None
        try:
            response = client.request(method, path, **kwargs)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout, httpx.WriteError) as exc:
            problem = f"dropped the connection ({type(exc).__name__}: {exc})"
        except httpx.HTTPError as exc:
            raise UsageError(f"cannot reach the Airflow API at {client.base_url}: {exc}") from None
        else:
            if response.status_code in (401, 403):
                raise UsageError(f"the Airflow API refused the credentials (HTTP {response.status_code}) for {path}")
            if response.status_code < 500:
                return response
            problem = f"answered HTTP {response.status_code} ({' '.join(response.text[:200].split())})"
        if attempt == attempts:
            raise UsageError(f"the Airflow API at {client.base_url} {problem} to {method} {path}, "
                             f"{attempts} times. Fix: check the api-server's log; on SQLite, concurrent "
                             "triggers need the PostgreSQL stack (docs/operations.md)")
        delay = BACKOFF * 2 ** (attempt - 1)
        print(f"warning: the Airflow API {problem} to {method} {path}; retry {attempt} of {attempts - 1} "
              f"in {delay:g} s", file=sys.stderr, flush=True)
        time.sleep(delay)
    raise AssertionError("unreachable")


def trigger(client: Any, dag_id: str, conf: dict[str, Any], *, unpause: bool) -> str:
    """Create the run; return its id. A conf the DAG's params refuse is a usage error."""
    dag = _call(client, "GET", f"/api/v2/dags/{dag_id}")
    if dag.status_code == 404:
        raise UsageError(f"no DAG {dag_id!r} on this Airflow: is the model name right, and its spec valid?")
    if dag.json().get("is_paused"):
        if not unpause:
            raise UsageError(f"{dag_id} is paused: unpause it in the UI, or pass --unpause")
        _call(client, "PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    run_id = new_run_id()
    body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
    response = _call(client, "POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
    if response.status_code == 409 and _call(client, "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").status_code == 200:
        return run_id  # an earlier attempt created it, and its answer was lost
    if response.status_code >= 400:
        raise UsageError(f"Airflow refused the run (HTTP {response.status_code}): {refusal(response)}")
    return str(response.json()["dag_run_id"])


MAX_REFUSAL = 300
"""Characters of an API refusal printed: Airflow's param errors quote the bad value, and its schema, in full."""


def refusal(response: Any) -> str:
    """The first line of what the API said (its ``detail``), at most :data:`MAX_REFUSAL` characters.

    Airflow answers a param that fails its schema with ``Invalid input for param reason: '<the value>' is too
    long``, then the schema and the value again; a 10 kB reason must not be printed twice.
    """
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if not isinstance(detail, str):  # FastAPI's 422: a list of {loc, msg, ...}
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail
                           if isinstance(d, dict)) if isinstance(detail, list) else json.dumps(detail)
    line = next((part.strip() for part in str(detail).splitlines() if part.strip()), "(no detail)")
    return line if len(line) <= MAX_REFUSAL else f"{line[:MAX_REFUSAL]}... ({len(line)} characters)"


def new_run_id() -> str:
    """A run id chosen here, so a retried trigger cannot create a second run: ``manual__<UTC time>_<random>``."""
    import datetime
    import secrets

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    return f"manual__{now}_{secrets.token_hex(3)}"


def wait(client: Any, dag_id: str, run_id: str, *, timeout: float, poll: float = 2.0, out: Any = sys.stdout) -> str:
    """Print each task as it finishes; return the run's final state."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    base = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    while True:
        tasks = _call(client, "GET", f"{base}/taskInstances").json().get("task_instances", [])
        for ti in sorted(tasks, key=lambda t: t.get("end_date") or ""):
            if ti["state"] in ("success", "failed", "skipped", "upstream_failed") and ti["task_id"] not in seen:
                seen.add(ti["task_id"])
                seconds = f" ({ti['duration']:.1f} s)" if ti.get("duration") else ""
                print(f"  {ti['state']:<15} {ti['task_id']}{seconds}", file=out, flush=True)
        state = _call(client, "GET", base).json()["state"]
        if state in TERMINAL:
            return str(state)
        if time.monotonic() > deadline:
            raise UsageError(f"gave up waiting after {timeout:.0f} s; the run {run_id} goes on in Airflow")
        time.sleep(poll)


def outcome(client: Any, dag_id: str, run_id: str) -> dict[str, Any]:
    """The release record's summary, pushed to XCom by the ``record`` task."""
    response = _call(client, "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/record/xcomEntries/return_value")
    if response.status_code != 200:
        return {"outcome": "failed", "reasons": ["the release ended without a record"]}
    value = response.json().get("value")
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def exit_code(summary: dict[str, Any]) -> int:
    from model_delivery.records import SUCCESS_OUTCOMES

    if summary.get("outcome") in SUCCESS_OUTCOMES:
        return EXIT_RELEASED
    if summary.get("outcome") == "rejected":
        return EXIT_REJECTED
    return EXIT_FAILED


def release_conf(args: Any) -> dict[str, Any]:
    """The run's conf from ``--conf``, ``--reason``, ``--force`` and ``--dry-run``, checked as the build task will.

    :raises UsageError: in one line naming the key, before any run exists.
    """
    from model_delivery.exceptions import InvalidConf
    from model_delivery.release import check_conf

    try:
        conf = json.loads(args.conf) if args.conf else {}
    except ValueError as exc:
        raise UsageError(f"--conf is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise UsageError(f"--conf must be a JSON object such as '{{\"reason\": \"...\"}}', not {type(conf).__name__}")
    if args.reason:
        conf["reason"] = args.reason
    if args.force:
        conf["force"] = True
    if args.dry_run:
        conf["dry_run"] = True
    try:
        check_conf(conf)  # the same rules as the build task's first step
    except InvalidConf as exc:
        raise UsageError(f"refused the run before triggering it: {exc}") from None
    return conf


def release(args: Any, out: Any = sys.stdout) -> int:
    """Run ``model-delivery release``; return the exit code."""
    try:
        conf = release_conf(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    dag_id = f"release__{args.model}"
    try:
        client = _client(args.api_url, args.token or os.environ.get("AIRFLOW_API_TOKEN"),
                         os.environ.get("AIRFLOW_API_USERNAME"), os.environ.get("AIRFLOW_API_PASSWORD"))
        with client:
            run_id = trigger(client, dag_id, conf, unpause=args.unpause)
            print(f"triggered {dag_id} run {run_id}", file=out, flush=True)
            if not args.wait:
                return EXIT_RELEASED
            state = wait(client, dag_id, run_id, timeout=args.timeout, out=out)
            summary = outcome(client, dag_id, run_id)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"run {run_id}: {state}; release {summary.get('outcome')}", file=out)
    for reason in summary.get("reasons") or []:
        print(f"  - {reason}", file=out)
    if summary.get("report"):
        print(f"report: {summary['report']}", file=out)
    return exit_code(summary)


def add_parser(sub: Any) -> None:
    """Register the ``release`` subcommand."""
    cmd = sub.add_parser("release", help="trigger a release through the Airflow REST API (and wait for it)")
    cmd.add_argument("model")
    cmd.add_argument("--reason", default="", help="recorded with the release")
    cmd.add_argument("--force", action="store_true", help="override a gate rejection (needs --reason)")
    cmd.add_argument("--dry-run", action="store_true",
                     help="run every check, report what the deploy target would change, change nothing")
    cmd.add_argument("--conf", default="", help="the run's conf as a JSON object")
    cmd.add_argument("--wait", action="store_true", help="wait for the end; the exit code tells the outcome")
    cmd.add_argument("--timeout", type=float, default=3600, help="seconds to wait at most (default 3600)")
    cmd.add_argument("--unpause", action="store_true", help="unpause the release DAG if it is paused")
    cmd.add_argument("--api-url", default=os.environ.get("AIRFLOW_API_URL", "http://localhost:8080"))
    cmd.add_argument("--token", default=None, help="API token (better: AIRFLOW_API_TOKEN in the environment)")
