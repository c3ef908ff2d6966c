"""Smoke tests: golden requests against a deployed server, checks on answers, a latency budget.

A golden file (``smoke.golden`` in the spec) is a JSON list of cases::

    [{"name": "a benign tumour",
      "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 30], "data": [...]}],
      "expect": {"output": "predict", "equals": [1]}}]

``expect`` takes ``output`` and any of: ``equals`` (exact values), ``allclose`` with
``atol``, ``one_of`` (every value must be one of these), ``shape``.

The cases go over REST (JSON, ``POST /v2/models/<name>/infer``) or, with ``smoke.protocol: grpc``, over
gRPC (``inference.GRPCInferenceService/ModelInfer``, inputs as ``raw_input_contents``): a gRPC answer is turned
into the JSON body REST would have given (each output's ``name``, ``datatype``, ``shape`` and flat ``data``) and
checked by the same :func:`check_answer`; the serving digest is the ``x-model-digest`` trailing metadata.
"""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_delivery.exceptions import InvalidModelSpec

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


class Expect(BaseModel):
    """What a golden answer must satisfy."""

    model_config = ConfigDict(extra="forbid")
    output: str = Field(description="Name of the output to check.")
    equals: list[Any] | None = None
    allclose: list[float] | None = None
    atol: float = 1e-6
    one_of: list[Any] | None = None
    shape: list[int] | None = None


CaseT = TypeVar("CaseT", bound=BaseModel)


class GoldenCase(BaseModel):
    """One golden request."""

    model_config = ConfigDict(extra="forbid")
    name: str
    inputs: list[dict[str, Any]] = Field(min_length=1)
    expect: Expect


def load_golden(path: Path) -> list[GoldenCase]:
    """Load golden cases; a malformed file raises ``InvalidModelSpec`` naming the case and field."""
    return load_cases(path, GoldenCase, "golden requests", "case")


def load_cases(path: Path, model: type[CaseT], what: str, noun: str) -> list[CaseT]:
    """A non-empty JSON list of ``model`` items; ``InvalidModelSpec`` names the item and the field otherwise."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelSpec(f"{path}: cannot read {what} ({exc}). Fix: a JSON list of {noun}s.") from None
    if not isinstance(raw, list) or not raw:
        raise InvalidModelSpec(f"{path}: must be a non-empty JSON list of {noun}s.")
    cases = []
    for index, item in enumerate(raw):
        try:
            cases.append(model.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InvalidModelSpec(f"{path}: {noun} {index}, field '{field}': {first['msg']}.") from None
    return cases


def check_answer(expect: Expect, body: dict[str, Any]) -> list[str]:
    """Problems with one inference response (empty when it passes)."""
    outputs = {o.get("name"): o for o in body.get("outputs", [])}
    if expect.output not in outputs:
        return [f"output {expect.output!r} missing (got {sorted(outputs)})"]
    out = outputs[expect.output]
    data = out.get("data", [])
    problems = []
    if expect.shape is not None and list(out.get("shape", [])) != expect.shape:
        problems.append(f"shape {out.get('shape')} != {expect.shape}")
    if expect.equals is not None and data != expect.equals:
        problems.append(f"{expect.output} = {data[:10]} != expected {expect.equals[:10]}")
    if expect.allclose is not None and (
        len(data) != len(expect.allclose)
        or any(abs(float(a) - float(b)) > expect.atol for a, b in zip(data, expect.allclose, strict=True))
    ):
        problems.append(f"{expect.output} = {data[:10]} not within {expect.atol} of {expect.allclose[:10]}")
    if expect.one_of is not None and any(v not in expect.one_of for v in data):
        problems.append(f"{expect.output} = {data[:10]} has values outside {expect.one_of}")
    return problems


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class RequestFailed(Exception):
    """A golden request got no answer at all (connection refused, timeout): it is not timed."""


def run_smoke(
    base_url: str,
    model: str,
    cases: list[GoldenCase],
    *,
    repeats: int,
    budget_ms: float,
    expect_digest: str | None = None,
    timeout: float = 10.0,
    token: str | None = None,
    protocol: Literal["rest", "grpc"] = "rest",
    grpc_address: str | None = None,
) -> dict[str, Any]:
    """Send every golden case ``repeats`` times; check answers, the serving digest and p95 latency.

    :param base_url: the REST address (``http://host:port``); the report's ``url`` with ``protocol`` rest.
    :param token: the servers' bearer token (``model_delivery.serving_auth``), sent with every request; never
        in the report.
    :param protocol: ``rest`` (JSON over HTTP) or ``grpc`` (to ``grpc_address``, ``host:port``).
    :return: a JSON-able report with ``passed``, ``protocol``, per-case results, latencies and ``failures``.
    :raises ValueError: ``protocol`` grpc without a ``grpc_address`` (the deployment has no gRPC port).
    """
    if protocol == "grpc":
        if not grpc_address:
            raise ValueError(f"smoke.protocol is grpc, but the deployment at {base_url} has no gRPC address: "
                             "deploy it again with serving.grpc: true")
        with _GrpcSender(grpc_address, model, timeout=timeout, token=token) as grpc_send:
            return _run(grpc_send, f"grpc://{grpc_address}", "grpc", cases, repeats=repeats, budget_ms=budget_ms,
                        expect_digest=expect_digest)

    import httpx

    from model_delivery.serving_auth import auth_headers

    with httpx.Client(base_url=base_url, timeout=timeout, headers=auth_headers(token)) as client:
        def rest_send(case: GoldenCase) -> tuple[str | None, str | None, dict[str, Any]]:
            try:
                response = client.post(f"/v2/models/{model}/infer", json={"inputs": case.inputs})
            except httpx.HTTPError as exc:
                raise RequestFailed(f"request failed: {type(exc).__name__}: {exc}") from None
            if response.status_code != 200:
                return f"HTTP {response.status_code}: {response.text[:200]}", None, {}
            return None, response.headers.get("x-model-digest"), response.json()

        return _run(rest_send, base_url, "rest", cases, repeats=repeats, budget_ms=budget_ms,
                    expect_digest=expect_digest)


def _run(send: Callable[[GoldenCase], tuple[str | None, str | None, dict[str, Any]]], url: str, protocol: str,
         cases: list[GoldenCase], *, repeats: int, budget_ms: float, expect_digest: str | None) -> dict[str, Any]:
    """The smoke test's loop, whatever carries the requests: ``send(case)`` answers (the call's failure or None,
    the serving digest, the answer as REST's JSON body), or raises :class:`RequestFailed`."""
    results, latencies, failures = [], [], []
    for case in cases:
        problems: list[str] = []
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                failed, served, body = send(case)
            except RequestFailed as exc:
                problems.append(str(exc))
                break
            latencies.append((time.perf_counter() - start) * 1000)
            if failed is not None:
                problems.append(failed)
                break
            if expect_digest and served != expect_digest:
                problems.append(f"served by digest {served}, expected {expect_digest}")
                break
            problems += check_answer(case.expect, body)
            if problems:
                break
        results.append({"name": case.name, "ok": not problems, "problems": problems})
        failures += [f"{case.name}: {p}" for p in problems]
    p95 = percentile(latencies, 95) if latencies else None
    if p95 is not None and p95 > budget_ms:
        failures.append(f"p95 latency {p95:.1f} ms exceeds the budget of {budget_ms} ms")
    return {
        "url": url,
        "protocol": protocol,
        "passed": not failures,
        "cases": results,
        "requests": len(latencies),
        "latency_ms": {
            "p50": percentile(latencies, 50) if latencies else None,
            "p95": p95,
            "max": max(latencies) if latencies else None,
            "budget_p95": budget_ms,
        },
        "failures": failures,
    }


# -- gRPC ----------------------------------------------------------------------------------------------------------

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
"""Every channel on its own connection: gRPC otherwise shares one among a process's channels to an address, and a
channel opened after a front switched would reuse a connection to the server it switched away from."""

_MESSAGES = ("ServerLiveRequest", "ServerLiveResponse", "ModelInferRequest", "ModelInferResponse")


def _oip_grpc() -> tuple[Any, Callable[[Any], Any]]:
    """The message classes of ``inference.GRPCInferenceService`` and a stub factory (``stub(channel)``).

    The model server's generated module (``model_server.grpc_predict_v2_pb2``) and its stub, unless another
    definition of package ``inference`` is in protobuf's default pool already (tritonclient.grpc's, in the same
    process): then that one's classes, which are the same messages on the wire, and a stub made of the same calls.
    """
    try:
        from model_server import grpc_predict_v2_pb2 as pb
        from model_server import grpc_predict_v2_pb2_grpc as pb_grpc
    except TypeError:  # "Couldn't build proto file into descriptor pool: duplicate symbol 'inference....'"
        from google.protobuf import descriptor_pool, message_factory

        pool = descriptor_pool.Default()
        found = SimpleNamespace(**{name: message_factory.GetMessageClass(pool.FindMessageTypeByName(
            f"inference.{name}")) for name in _MESSAGES})

        def stub(channel: Any) -> Any:
            def call(method: str, request: str, response: str) -> Any:
                return channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                           request_serializer=getattr(found, request).SerializeToString,
                                           response_deserializer=getattr(found, response).FromString)

            return SimpleNamespace(ServerLive=call("ServerLive", "ServerLiveRequest", "ServerLiveResponse"),
                                   ModelInfer=call("ModelInfer", "ModelInferRequest", "ModelInferResponse"))

        return found, stub
    return pb, pb_grpc.GRPCInferenceServiceStub


def grpc_served_digest(address: str, timeout: float = 2.0) -> str | None:
    """The digest a new gRPC channel to ``address`` (``host:port``) is answered from (the ``x-model-digest``
    trailing metadata of ``ServerLive``, which needs no token), or None when nothing answers."""
    import grpc

    messages, stub = _oip_grpc()
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        try:
            _, call = stub(channel).ServerLive.with_call(messages.ServerLiveRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
        return dict(call.trailing_metadata() or ()).get("x-model-digest")


class _GrpcSender:
    """Sends golden cases over one gRPC channel: ``ModelInfer`` with ``raw_input_contents``, the answer turned
    into REST's JSON body."""

    def __init__(self, address: str, model: str, *, timeout: float, token: str | None) -> None:
        import grpc

        self.grpc = grpc
        self.messages, stub = _oip_grpc()
        self.channel = grpc.insecure_channel(address, options=[*CHANNEL_OPTIONS,
                                                               ("grpc.max_receive_message_length", -1)])
        self.stub = stub(self.channel)
        self.model = model
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.requests: dict[int, Any] = {}

    def __enter__(self) -> _GrpcSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def request(self, case: GoldenCase) -> Any:
        """The ``ModelInferRequest`` of a golden case (built once per case).

        :raises ValueError: an input the binary encoding cannot carry (named).
        """
        import numpy as np

        from model_server import binary

        request = self.messages.ModelInferRequest(model_name=self.model, id=case.name[:64])
        for index, given in enumerate(case.inputs):
            datatype = str(given.get("datatype", ""))
            shape = [int(d) for d in given.get("shape", [])]
            data = given.get("data", [])
            try:
                if datatype == "BYTES":
                    array = np.array(data, dtype=object).reshape(-1)
                else:
                    array = np.asarray(data, dtype=binary.FIXED[datatype]).reshape(-1)
                raw = binary.encode(array, datatype)
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"inputs[{index}] ({given.get('name')!r}, {datatype}) cannot be sent over gRPC: "
                                 f"{type(exc).__name__}: {exc}") from None
            request.inputs.add(name=str(given.get("name", "")), datatype=datatype, shape=shape)
            request.raw_input_contents.append(raw)
        return request

    def __call__(self, case: GoldenCase) -> tuple[str | None, str | None, dict[str, Any]]:
        try:
            request = self.requests.get(id(case)) or self.requests.setdefault(id(case), self.request(case))
        except ValueError as exc:
            return str(exc), None, {"error": str(exc)}
        try:
            response, call = self.stub.ModelInfer.with_call(request, metadata=self.metadata, timeout=self.timeout)
        except self.grpc.RpcError as exc:
            code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
            if code in (self.grpc.StatusCode.UNAVAILABLE, self.grpc.StatusCode.DEADLINE_EXCEEDED):
                raise RequestFailed(f"request failed: gRPC {code.name}: {details}") from None
            return f"gRPC {code.name}: {str(details)[:200]}", None, {"error": details}
        served = dict(call.trailing_metadata() or ()).get("x-model-digest")
        try:
            return None, served, _as_rest(response)
        except ValueError as exc:
            return f"the answer cannot be read: {exc}", served, {"error": str(exc)}


def _as_rest(response: Any) -> dict[str, Any]:
    """A ``ModelInferResponse`` as the JSON body REST answers with: each output's flat ``data``.

    :raises ValueError: raw contents that do not fit an output's datatype and shape.
    """
    from model_server import binary

    raw = list(response.raw_output_contents)
    if raw and len(raw) != len(response.outputs):
        raise ValueError(f"{len(raw)} raw_output_contents for {len(response.outputs)} outputs")
    outputs = []
    for index, tensor in enumerate(response.outputs):
        shape = [int(d) for d in tensor.shape]
        if raw:
            values = binary.decode(raw[index], tensor.datatype, shape, f"outputs[{index}]").tolist()
        else:  # typed contents (another server may answer so)
            field = next((f for f, _ in tensor.contents.ListFields()), None)
            values = list(getattr(tensor.contents, field.name)) if field is not None else []
        if tensor.datatype == "BYTES":
            values = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in values]
        outputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": values})
    return {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
