"""The local deploy target with real processes: model servers on their own ports behind the real
front proxy, blue-green shifts, rollbacks, restarts, port conflicts, tampered copies, zero downtime.

Every process a test starts has the test's state directory on its command line and is killed
when the test ends.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from model_delivery.deploy import Candidate, get_target
from model_delivery.deploy.local.spec import LocalTargetSpec
from model_delivery.deploy.local.target import LocalTarget
from model_delivery.exceptions import DeployFailed, TamperedArtifact
from model_delivery.settings import get_settings
from model_delivery.spec import load_spec
from model_server.manifest import MANIFEST_NAME, parse_digest, verify_directory
from tests.helpers.models import PROJECT, copy_models, free_port
from tests.helpers.processes import gone

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.unit.model_delivery.conftest import Builds

MODEL = "breast_cancer"
DEADLINE = 60.0
_GOLDEN = json.loads((PROJECT / "include" / "models" / MODEL / "golden.json").read_text())
INFER_BODY = json.dumps({"inputs": _GOLDEN[0]["inputs"]}).encode()


def infer(port: int, timeout: float = 5.0) -> tuple[int, str | None]:
    """One inference request on a new connection; return the status and the X-Model-Digest header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body=INFER_BODY,
                     headers={"Content-Type": "application/json", "Connection": "close"})  # fmt: skip
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Model-Digest")
    finally:
        conn.close()


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and not gone(pid):
        time.sleep(0.05)
    return gone(pid)


@pytest.fixture
def front_port() -> int:
    return free_port()


@pytest.fixture
def make_target(builds: Builds, state_dir: Path, front_port: int) -> Callable[[], LocalTarget]:
    """A new LocalTarget over the same state each call (a new instance is what a restarted Airflow has)."""
    config = LocalTargetSpec(port=front_port, ready_timeout_seconds=DEADLINE)
    return lambda: LocalTarget(MODEL, config, state_dir, builds.store)


@pytest.fixture
def v1(builds: Builds) -> Candidate:
    return Candidate(MODEL, "1", builds.v1.digest)


@pytest.fixture
def v2(builds: Builds) -> Candidate:
    return Candidate(MODEL, "2", builds.v2.digest)


def test_get_target_uses_model_delivery_home(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_DELIVERY_HOME", str(tmp_path / "home"))
    spec = load_spec(copy_models(tmp_path / "models", (MODEL,)) / MODEL)

    target = get_target(spec, get_settings(), builds.store)

    assert isinstance(target, LocalTarget)
    assert target.state_dir == tmp_path / "home" / "deploy" / MODEL
    assert spec.deploy.local is not None
    assert target.front_url == f"http://127.0.0.1:{spec.deploy.local.port}"
    assert target.rollback("never-ran") == {"action": "none", "serving": None}
    assert target.status()["active"] is None


def test_stage_starts_a_server_on_its_own_port_and_is_idempotent(
    make_target: Callable[[], LocalTarget], v1: Candidate, state_dir: Path, front_port: int
) -> None:
    target = make_target()

    staged = target.stage(v1, "run-1")

    assert staged["digest"] == v1.digest and staged["version"] == "1"
    assert staged["port"] != front_port
    assert infer(staged["port"]) == (200, v1.digest)
    assert not listening(front_port)  # the front is not involved before shift
    assert not (state_dir / "front.json").exists()
    status = target.status()
    assert status["active"] is None and status["candidates"]["run-1"]["pid"] == staged["pid"]
    fetched = state_dir / "artifacts" / parse_digest(v1.digest)
    verify_directory(fetched, v1.digest)

    again = target.stage(v1, "run-1")
    after_restart = make_target().stage(v1, "run-1")

    assert again["pid"] == after_restart["pid"] == staged["pid"]
    assert "already running" in again["note"]
    assert len(list((state_dir / "logs").glob("v1-*.log"))) == 1


class Client(threading.Thread):
    """Sends requests through the front, each on a new connection, until stopped (bounded)."""

    def __init__(self, port: int, limit: int) -> None:
        super().__init__(daemon=True)
        self.port, self.limit = port, limit
        self.results: list[tuple[int | str, str | None]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 4 * DEADLINE
        while not self.stopped.is_set() and len(self.results) < self.limit and time.monotonic() < deadline:
            try:
                self.results.append(infer(self.port))
            except (OSError, http.client.HTTPException) as exc:
                self.results.append((f"{type(exc).__name__}: {exc}", None))

    def wait_for_more(self, count: int) -> None:
        target = len(self.results) + count
        deadline = time.monotonic() + DEADLINE
        while len(self.results) < target and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.results) >= target, "the client stopped sending"

    def finish(self) -> list[tuple[int | str, str | None]]:
        self.stopped.set()
        self.join(timeout=DEADLINE)
        assert not self.is_alive()
        return self.results


def _runs(digests: list[str | None]) -> list[str | None]:
    """Consecutive duplicates collapsed: the order in which digests served."""
    return [d for i, d in enumerate(digests) if i == 0 or digests[i - 1] != d]


def test_blue_green_shift_and_rollback_without_dropping_a_request(
    make_target: Callable[[], LocalTarget], v1: Candidate, v2: Candidate, front_port: int
) -> None:
    target = make_target()
    first = target.stage(v1, "run-1")
    shifted = target.shift("run-1")
    assert shifted["url"] == f"http://127.0.0.1:{front_port}"
    assert shifted["standby"] is None
    assert infer(front_port) == (200, v1.digest)
    second = target.stage(v2, "run-2")
    assert infer(front_port) == (200, v1.digest)  # staging takes no traffic

    client = Client(front_port, limit=3000)
    client.start()
    client.wait_for_more(40)
    result = target.shift("run-2")
    client.wait_for_more(40)
    state_after_shift = target.status()
    assert infer(first["port"]) == (200, v1.digest)  # v1 stays warm as standby
    rolled_back = target.rollback("run-2")
    client.wait_for_more(40)
    results = client.finish()

    failed = [r for r in results if r[0] != 200]
    print(f"failed requests during shift: {len(failed)} of {len(results)}")
    assert failed == []
    assert _runs([digest for _, digest in results]) == [v1.digest, v2.digest, v1.digest]
    assert result["digest"] == v2.digest and result["standby"] == "1"
    assert state_after_shift["active"]["pid"] == second["pid"]
    assert state_after_shift["standby"]["pid"] == first["pid"]
    assert rolled_back == {"action": "switched-back", "serving": "1"}
    assert infer(front_port) == (200, v1.digest)
    assert wait_gone(second["pid"])
    assert not gone(first["pid"])
    status = target.status()
    assert status["active"]["pid"] == first["pid"] and status["active_alive"] is True
    assert status["standby"] is None


def test_keep_alive_clients_follow_the_switch_and_the_switch_back(
    make_target: Callable[[], LocalTarget], v1: Candidate, v2: Candidate, front_port: int
) -> None:
    import httpx

    target = make_target()
    target.stage(v1, "run-1")
    target.shift("run-1")
    target.stage(v2, "run-2")
    with httpx.Client(base_url=f"http://127.0.0.1:{front_port}", timeout=10) as client:

        def ask() -> tuple[str, str]:
            response = client.post(f"/v2/models/{MODEL}/infer", content=INFER_BODY,
                                   headers={"Content-Type": "application/json"})
            assert response.status_code == 200, response.text
            return response.headers["x-model-digest"], response.headers.get("connection", "keep-alive")

        assert ask() == (v1.digest, "keep-alive")  # one connection, kept open
        target.shift("run-2")
        after_shift = [ask() for _ in range(3)]
        target.rollback("run-2")
        after_rollback = [ask() for _ in range(3)]

    # The open connection's next answer still comes from v1, which now closes it; the client
    # reconnects through the front, to v2, and stays there.
    assert after_shift == [(v1.digest, "close"), (v2.digest, "keep-alive"), (v2.digest, "keep-alive")]
    # Back on v1, which no longer drains: its connections are kept open again.
    assert after_rollback == [(v1.digest, "keep-alive")] * 3


def test_retire_after_a_shift_stops_the_standby_even_after_a_restart(
    make_target: Callable[[], LocalTarget], v1: Candidate, v2: Candidate, front_port: int
) -> None:
    first = make_target()
    one = first.stage(v1, "run-1")
    first.shift("run-1")

    restarted = make_target()  # a new process, as after an Airflow restart: all it has is the state
    assert restarted.status()["active"]["pid"] == one["pid"]
    two = restarted.stage(v2, "run-2")
    assert restarted.shift("run-2")["standby"] == "1"
    assert not gone(one["pid"])

    assert make_target().retire("run-2") == {"stopped": "1"}

    assert wait_gone(one["pid"])
    assert infer(front_port) == (200, v2.digest)
    assert make_target().retire("run-2") == {"stopped": None}
    status = make_target().status()
    assert status["active"]["pid"] == two["pid"] and status["standby"] is None


def test_rollback_of_a_run_that_only_staged_leaves_production_alone(
    make_target: Callable[[], LocalTarget], v1: Candidate, v2: Candidate, front_port: int
) -> None:
    target = make_target()
    production = target.stage(v1, "run-1")
    target.shift("run-1")
    candidate = target.stage(v2, "run-2")

    assert target.rollback("run-2") == {"action": "stopped-candidate", "serving": "1"}

    assert wait_gone(candidate["pid"])
    assert not gone(production["pid"])
    assert infer(front_port) == (200, v1.digest)
    assert target.status()["active"]["pid"] == production["pid"]
    assert target.rollback("run-2") == {"action": "none", "serving": "1"}
    assert target.rollback("no-such-run") == {"action": "none", "serving": "1"}
    assert infer(front_port) == (200, v1.digest)


def test_staging_the_active_digest_reuses_production_and_its_rollback_keeps_it(
    make_target: Callable[[], LocalTarget], v1: Candidate, front_port: int
) -> None:
    target = make_target()
    production = target.stage(v1, "run-1")
    target.shift("run-1")

    again = target.stage(v1, "run-3")

    assert again["pid"] == production["pid"]
    assert "already running" in again["note"]
    assert target.rollback("run-3") == {"action": "none", "serving": "1"}
    assert not gone(production["pid"])
    assert infer(front_port) == (200, v1.digest)

    # Rolling back the run that made the first release leaves nothing serving: the front says 503.
    assert target.rollback("run-1") == {"action": "stopped-no-standby", "serving": None}
    assert wait_gone(production["pid"])
    assert infer(front_port)[0] == 503


def test_a_front_port_taken_by_another_listener_fails_the_shift(
    make_target: Callable[[], LocalTarget], v1: Candidate, front_port: int
) -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", front_port))
        other.listen()
        target = make_target()
        staged = target.stage(v1, "run-1")

        with pytest.raises(DeployFailed) as caught:
            target.shift("run-1")

    message = str(caught.value)
    assert f"port {front_port}" in message
    assert "deploy.local.port" in message
    status = target.status()
    assert status["active"] is None
    assert status["candidates"]["run-1"]["pid"] == staged["pid"] and not gone(staged["pid"])
    assert target.rollback("run-1") == {"action": "stopped-candidate", "serving": None}
    assert wait_gone(staged["pid"])


def test_plan_starts_nothing_and_names_a_taken_front_port(
    make_target: Callable[[], LocalTarget], v1: Candidate, state_dir: Path, front_port: int
) -> None:
    target = make_target()
    plan = target.plan(v1)
    assert plan["serving"] is None and plan["artifact_verified"] is True
    assert f"would start version 1 on a free port of 127.0.0.1, then switch http://127.0.0.1:{front_port} from " \
           "nothing to it (starting the front)" == plan["note"]
    assert not state_dir.exists() or not (state_dir / "state.json").exists()
    assert not listening(front_port)

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", front_port))
        other.listen()
        with pytest.raises(DeployFailed, match=f"port {front_port} on 127.0.0.1 is taken.*deploy.local.port"):
            target.plan(v1)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_local_copy_is_never_served(
    make_target: Callable[[], LocalTarget], builds: Builds, v1: Candidate, state_dir: Path
) -> None:
    target = make_target()
    fetched = state_dir / "artifacts" / parse_digest(v1.digest)
    state_dir.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, Any] = {}

    def stage() -> None:
        try:
            outcome["result"] = target.stage(v1, "run-1")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    # Hold the deploy lock so that stage stops between its verified fetch and starting the server;
    # change the fetched copy in that gap: the server itself must refuse it.
    with open(state_dir / "deploy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker = threading.Thread(target=stage, daemon=True)
        worker.start()
        deadline = time.monotonic() + DEADLINE
        while not (fetched / MANIFEST_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (fetched / MANIFEST_NAME).exists(), outcome
        _flip_byte(fetched / "model.joblib")
    worker.join(timeout=2 * DEADLINE)
    assert not worker.is_alive()

    error = outcome.get("error")
    assert isinstance(error, TamperedArtifact), outcome
    assert "refused the artifact" in str(error) and "model.joblib" in str(error)
    assert target.status()["candidates"] == {}

    # Staging again finds the damaged local copy, fetches a verified one, and serves that.
    staged = target.stage(v1, "run-1")

    assert infer(staged["port"]) == (200, v1.digest)
    assert (fetched / "model.joblib").read_bytes() == (builds.v1.model_dir / "model.joblib").read_bytes()
    verify_directory(fetched, v1.digest)


def test_state_is_saved_even_when_a_step_fails_half_way(make_target: Callable[[], LocalTarget]) -> None:
    target = make_target()
    started = {"host": "127.0.0.1", "port": 1, "pid": 12345}
    with pytest.raises(RuntimeError, match="boom"), target._locked() as state:
        state["front"] = started  # a process was started, then the step failed
        raise RuntimeError("boom")

    assert make_target()._read()["front"] == started


def test_a_failed_start_reports_the_first_errors_of_the_log_not_only_its_tail(tmp_path: Path) -> None:
    """vLLM's last words are a wrapper's traceback ("See root cause above"); the cause is further up."""
    from model_delivery.deploy.local.target import _tail

    log = tmp_path / "server.log"
    log.write_text("\n".join(["INFO starting", "(EngineCore pid=7) ERROR EngineCore failed to start.",
                              "FileNotFoundError: [Errno 2] No such file or directory: '/mp-x'",
                              *[f"  frame {n}" for n in range(40)],
                              "RuntimeError: Engine core initialization failed. See root cause above."]))
    excerpt = _tail(log).splitlines()
    assert excerpt[:2] == ["(EngineCore pid=7) ERROR EngineCore failed to start.",
                           "FileNotFoundError: [Errno 2] No such file or directory: '/mp-x'"]
    assert excerpt[-1].startswith("RuntimeError: Engine core initialization failed")
    assert "INFO starting" not in excerpt and len(excerpt) == 2 + 1 + 15
    short = tmp_path / "short.log"
    short.write_text("ValueError: bad\nlast line")
    assert _tail(short) == "ValueError: bad\nlast line"  # nothing repeated when the whole log fits


KILLED_MID_SWITCH = """
import os, signal, sys
from pathlib import Path
import model_delivery.deploy.local.target as local
from model_delivery.store import ArtifactStore
from model_delivery.deploy.local.spec import LocalTargetSpec

write_state = local.write_state

def write_then_die(path, host, port, **extra):  # kill -9 right after the front moved, before the state is saved
    write_state(path, host, port, **extra)
    if host is not None:
        os.kill(os.getpid(), signal.SIGKILL)

local.write_state = write_then_die
target = local.LocalTarget(sys.argv[1], LocalTargetSpec(port=int(sys.argv[2]), ready_timeout_seconds=60),
                           Path(sys.argv[3]), ArtifactStore(sys.argv[4]))
target.shift("run-2")
"""


def test_a_switch_killed_after_the_front_moved_is_undone_by_the_rollback(
        make_target: Callable[[], LocalTarget], builds: Builds, v1: Candidate, v2: Candidate, state_dir: Path,
        front_port: int) -> None:
    """kill -9 of the shift between moving the front and saving the state, then the rollback: production
    must be v1 through the front (before the fix, the rollback stopped v2 under the front: 503 until the
    next release, while the rollback reported success)."""
    import subprocess
    import sys

    target = make_target()
    target.stage(v1, "run-1")
    target.shift("run-1")
    staged = target.stage(v2, "run-2")
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SWITCH, MODEL, str(front_port), str(state_dir),
                             builds.store_root], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert infer(front_port) == (200, v2.digest)  # the front moved; the saved state still says v1 is active

    rolled_back = make_target().rollback("run-2")

    assert wait_gone(staged["pid"])
    assert infer(front_port) == (200, v1.digest)  # production serves, and it is what the state says
    assert rolled_back["action"] == "stopped-candidate" and rolled_back["serving"] == "1"
    assert "interrupted switch" in rolled_back["recovered"]
    assert make_target().status()["active"]["digest"] == v1.digest


def _environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read()  # noqa: SIM115 - a one-shot read of /proc
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def test_servers_get_the_token_in_an_allow_listed_environment_and_clients_send_it(
    builds: Builds, state_dir: Path, front_port: int, v1: Candidate, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fnmatch import fnmatchcase

    from model_delivery.deploy.local.target import SERVING_PATH
    from model_delivery.runtimes import SERVER_ENV
    from model_delivery.smoke import load_golden, run_smoke

    token = "tok-local-5d1e0c"
    monkeypatch.setenv("AIRFLOW_CONN_MODEL_DELIVERY_SERVING_TOKEN",
                       json.dumps({"conn_type": "generic", "password": token}))  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_SOMETHING", "postgresql://release:hunter2@db/prod")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = LocalTargetSpec(port=front_port, ready_timeout_seconds=DEADLINE)
    target = LocalTarget(MODEL, config, state_dir, builds.store, token_conn_id="model_delivery_serving_token")

    staged = target.stage(v1, "run-1")
    shifted = target.shift("run-1")

    front_pid = target.ledger.state(MODEL, "local")["front"]["pid"]
    server, front = _environ(staged["pid"]), _environ(front_pid)
    assert server["MODEL_SERVER_TOKEN"] == token and server["OMP_NUM_THREADS"] == "1"
    assert server["PYTHONPATH"] == front["PYTHONPATH"] == str(SERVING_PATH)
    for env in (server, front):
        assert all(name in ("PYTHONPATH", "MODEL_SERVER_TOKEN") or any(fnmatchcase(name, p) for p in SERVER_ENV)
                   for name in env), sorted(env)  # fmt: skip
        assert "AIRFLOW_CONN_SOMETHING" not in env and not any("hunter2" in value for value in env.values())
    assert "MODEL_SERVER_TOKEN" not in front  # a TCP proxy: the client's header passes through it
    for pid in (staged["pid"], front_pid):
        assert token not in open(f"/proc/{pid}/cmdline").read()  # noqa: SIM115
    said = json.dumps([staged, shifted, target.status(), target.ledger.state(MODEL, "local")])
    logs = "".join(p.read_text(errors="replace") for p in (state_dir / "logs").glob("*.log"))
    assert token not in said and token not in logs

    golden = load_golden(PROJECT / "include" / "models" / MODEL / "golden.json")
    for url in (staged["url"], target.front_url):  # the candidate (smoke), then production through the front (verify)
        assert infer(int(url.rsplit(":", 1)[1])) == (401, v1.digest)
        passed = run_smoke(url, MODEL, golden, repeats=1, budget_ms=60_000, expect_digest=v1.digest, token=token)
        refused = run_smoke(url, MODEL, golden, repeats=1, budget_ms=60_000, expect_digest=v1.digest)
        assert passed["passed"] is True, passed["failures"]
        assert refused["passed"] is False and "HTTP 401" in refused["failures"][0]


def test_a_token_connection_that_is_missing_fails_the_stage_and_starts_nothing(
    builds: Builds, state_dir: Path, front_port: int, v1: Candidate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_SERVING_TOKEN_NOWHERE", raising=False)
    config = LocalTargetSpec(port=front_port, ready_timeout_seconds=DEADLINE)
    target = LocalTarget(MODEL, config, state_dir, builds.store, token_conn_id="serving_token_nowhere")

    with pytest.raises(DeployFailed, match=r"'serving_token_nowhere' is not defined.*Fix: create it"):
        target.stage(v1, "run-1")

    assert target.status()["candidates"] == {}
    assert not (state_dir / "logs").exists()
