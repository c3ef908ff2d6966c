"""gRPC through the local target: each blue/green server gets a gRPC port, and the front forwards its own gRPC
port to the active server, switching with the HTTP port. Real model servers, a real front, and Triton's
tritonclient.grpc (written by others) as the client.

tritonclient.grpc is imported here; the smoke test's own gRPC client (model_delivery.smoke) copes with it being
in the process (see test_smoke_grpc.py for the smoke test over gRPC).
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sklearn.datasets import load_breast_cancer
from tritonclient.utils import InferenceServerException

from model_delivery.deploy import Candidate
from model_delivery.deploy.local.spec import LocalTargetSpec
from model_delivery.deploy.local.target import LocalTarget
from model_delivery.smoke import grpc_served_digest, load_golden, run_smoke
from model_delivery.spec import ServingSpec
from tests.helpers.models import PROJECT, free_port

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.unit.model_delivery.conftest import Builds

MODEL = "breast_cancer"
DEADLINE = 60.0


@pytest.fixture
def ports() -> tuple[int, int]:
    http, grpc = free_port(), free_port()
    while grpc == http:
        grpc = free_port()
    return http, grpc


@pytest.fixture
def make_target(builds: Builds, state_dir: Path, ports: tuple[int, int]) -> Callable[[], LocalTarget]:
    config = LocalTargetSpec(port=ports[0], grpc_port=ports[1], ready_timeout_seconds=DEADLINE)
    serving = ServingSpec(grpc=True)
    return lambda: LocalTarget(MODEL, config, state_dir, builds.store, serving)


def _new_client(address: str) -> grpcclient.InferenceServerClient:
    """A client on a connection of its own: gRPC shares one connection among a process's channels to the same
    address with the same arguments (its global subchannel pool), so a second client would reuse the first's."""
    return grpcclient.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])


def _infer(client: grpcclient.InferenceServerClient) -> tuple[str, np.ndarray]:
    """One inference over ``client``'s channel: the answering version and its predictions."""
    rows = load_breast_cancer().data[:4]
    inp = grpcclient.InferInput("features", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows)
    result = client.infer(MODEL, [inp], client_timeout=20)
    return result.get_response().model_version, result.as_numpy("predict")


def test_the_front_forwards_grpc_to_the_active_server_and_switches(
    make_target: Callable[[], LocalTarget], builds: Builds, ports: tuple[int, int]
) -> None:
    target = make_target()
    front = f"127.0.0.1:{ports[1]}"
    v1, v2 = Candidate(MODEL, "1", builds.v1.digest), Candidate(MODEL, "2", builds.v2.digest)

    staged = target.stage(v1, "run-1")
    assert staged["grpc_url"] == f"127.0.0.1:{staged['grpc_port']}" and staged["grpc_port"] != staged["port"]
    with pytest.raises(InferenceServerException):  # no front yet: nothing listens on its gRPC port
        grpcclient.InferenceServerClient(front).is_server_live(client_timeout=2)
    shifted = target.shift("run-1")
    assert shifted["grpc_url"] == front and shifted["url"] == f"http://127.0.0.1:{ports[0]}"

    before = grpcclient.InferenceServerClient(front)  # a channel opened before the switch, kept open
    assert before.is_server_ready(client_timeout=5)
    version, predictions = _infer(before)
    assert version == "1" and predictions.shape == (4,)
    assert grpc_served_digest(front) == builds.v1.digest

    target.stage(v2, "run-2")
    target.shift("run-2")

    after = _new_client(front)  # new connections go to the new active server
    assert _infer(after)[0] == "2"
    assert grpc_served_digest(front) == builds.v2.digest
    # The open channel stays on the server it was opened to (the front is a layer-4 forwarder); that server,
    # now the standby, drains it.
    assert _infer(before)[0] == "1"

    assert target.rollback("run-2")["action"] == "switched-back"
    assert _infer(_new_client(front))[0] == "1"
    assert target.status()["front_grpc"] == front


def test_the_smoke_test_speaks_grpc_through_the_front_and_the_staged_server(
    make_target: Callable[[], LocalTarget], builds: Builds
) -> None:
    """The release's smoke test over gRPC with tritonclient.grpc in the same process (its ``inference`` package
    is then protobuf's, and the smoke test uses those classes)."""
    target = make_target()
    staged = target.stage(Candidate(MODEL, "1", builds.v1.digest), "run-1")
    shifted = target.shift("run-1")
    cases = load_golden(PROJECT / "include" / "models" / MODEL / "golden.json")
    for address in (staged["grpc_url"], shifted["grpc_url"]):
        report = run_smoke(staged["url"], MODEL, cases, repeats=2, budget_ms=60_000, expect_digest=builds.v1.digest,
                           protocol="grpc", grpc_address=address)
        assert report["passed"] is True, report["failures"]
        assert report["protocol"] == "grpc" and report["url"] == f"grpc://{address}"
        assert report["requests"] == 2 * len(cases)


def test_a_grpc_front_port_taken_by_another_listener_fails_the_shift(
    make_target: Callable[[], LocalTarget], builds: Builds, ports: tuple[int, int]
) -> None:
    target = make_target()
    target.stage(Candidate(MODEL, "1", builds.v1.digest), "run-1")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[1]))
        squatter.listen()
        with pytest.raises(Exception, match=r"port \d+ on 127.0.0.1 is taken by another process.*deploy.local.grpc_port"):
            target.shift("run-1")
    with contextlib.suppress(Exception):
        target.rollback("run-1")


def test_turning_grpc_on_restarts_a_front_that_runs_without_it(
    builds: Builds, state_dir: Path, ports: tuple[int, int]
) -> None:
    without = LocalTarget(MODEL, LocalTargetSpec(port=ports[0], ready_timeout_seconds=DEADLINE), state_dir,
                          builds.store)
    without.stage(Candidate(MODEL, "1", builds.v1.digest), "run-1")
    assert "grpc_url" not in without.shift("run-1")
    front_pid = without._read()["front"]["pid"]
    with pytest.raises(InferenceServerException):
        _new_client(f"127.0.0.1:{ports[1]}").is_server_live(client_timeout=2)

    target = LocalTarget(MODEL, LocalTargetSpec(port=ports[0], grpc_port=ports[1], ready_timeout_seconds=DEADLINE),
                         state_dir, builds.store, ServingSpec(grpc=True))
    staged = target.stage(Candidate(MODEL, "1", builds.v1.digest), "run-2")  # same digest, but no gRPC port: anew
    assert staged["grpc_port"] and "already running" not in staged["note"]
    shifted = target.shift("run-2")
    assert shifted["grpc_url"] == f"127.0.0.1:{ports[1]}"
    assert target._read()["front"]["pid"] != front_pid and target._read()["front"]["grpc_port"] == ports[1]
    assert _infer(_new_client(shifted["grpc_url"]))[0] == "1"
    assert grpc_served_digest(shifted["grpc_url"]) == builds.v1.digest
