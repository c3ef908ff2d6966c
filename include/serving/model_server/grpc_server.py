"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``) for the model of an app.

Started by ``python -m model_server --grpc-port N`` in the same process and on the same asyncio event loop
as the HTTP server (:func:`serve_with_grpc`), it serves the model of :func:`model_server.app.create_app`
with the same checks, limits and messages: a message is at most ``--max-body-bytes`` (else
``RESOURCE_EXHAUSTED``, grpc's own message), an input at most ``--max-rows`` rows. With a token, every method
but ``ServerLive`` and ``ServerReady`` needs the metadata ``authorization: Bearer <token>``, as REST.

REST errors map to status codes: 400 ``INVALID_ARGUMENT``, 401 ``UNAUTHENTICATED``, 404 ``NOT_FOUND``,
413 ``RESOURCE_EXHAUSTED``; anything unexpected is ``INTERNAL`` with ``internal error, id <uuid>``, the
traceback in the log under that id. Inputs come as typed ``contents`` or as ``raw_input_contents`` (decoded
by :mod:`model_server.binary`); outputs always go back as ``raw_output_contents``, as Triton's do.
Every answer's trailing metadata has ``x-model-version`` and ``x-model-digest``; requests are counted in
``model_server_requests_total`` with ``endpoint="grpc:<method>"`` and the status code's name.

The message classes (``grpc_predict_v2_pb2``) register package ``inference`` in protobuf's default
descriptor pool, as tritonclient.grpc's do: do not import both in one process (tests use tritonclient
against a server process).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from pydantic import ValidationError

from model_server import __version__, binary
from model_server import grpc_predict_v2_pb2 as pb
from model_server import grpc_predict_v2_pb2_grpc as pb_grpc
from model_server.app import (
    EXTENSIONS,
    SERVER_NAME,
    ApiError,
    InferenceInput,
    InferenceRequest,
    RequestedOutput,
    Values,
    check_rows,
    format_validation_error,
    predict_request,
    unauthorized,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import uvicorn
    from fastapi import FastAPI

    from model_server.app import _Routes

logger = logging.getLogger(__name__)

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""The gRPC status code of each HTTP status the REST API answers errors with (anything else: INTERNAL)."""

#: The typed ``contents`` field of each datatype (FP16 travels only as raw contents).
CONTENTS = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}


class GrpcBindError(RuntimeError):
    """The gRPC port could not be bound."""


def _parameters(params: Any) -> dict[str, Any] | None:
    """A proto ``map<string, InferParameter>`` as a dict of plain values (None when empty)."""
    if not params:
        return None
    out = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def _values(tensor: Any, index: int) -> np.ndarray:
    """The flat values of one input's typed ``contents``."""
    where = f"inputs[{index}]"
    if not tensor.HasField("contents"):
        raise ApiError(400, f"{where} has no contents: set {where}.contents (e.g. fp64_contents for FP64) "
                            "or give every input's bytes in raw_input_contents")
    field, dtype = CONTENTS.get(tensor.datatype, (None, None))
    if field is None:
        raise ApiError(400, f"{where}.datatype {tensor.datatype!r} cannot be sent as contents: send it in "
                            "raw_input_contents")
    return np.array(getattr(tensor.contents, field), dtype=dtype)


def parse_request(request: Any, limits_rows: int) -> tuple[InferenceRequest, Values]:
    """A ``ModelInferRequest`` as the REST request it stands for, and each input's flat values.

    :raises ApiError: it does not fit the protocol (400) or holds too many rows (413).
    """
    try:
        parsed = InferenceRequest(
            id=request.id or None,
            parameters=_parameters(request.parameters),
            inputs=[InferenceInput(name=t.name, datatype=t.datatype, shape=list(t.shape),
                                   parameters=_parameters(t.parameters)) for t in request.inputs],
            outputs=[RequestedOutput(name=o.name, parameters=_parameters(o.parameters)) for o in request.outputs]
            or None,
        )
    except ValidationError as exc:
        raise ApiError(400, format_validation_error(exc)) from None
    check_rows(parsed, limits_rows)
    raw = request.raw_input_contents
    if not raw:
        return parsed, [_values(t, i) for i, t in enumerate(request.inputs)]
    if len(raw) != len(request.inputs):
        raise ApiError(400, f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} "
                            "inputs: give one per input, in the order of inputs")
    for index, tensor in enumerate(request.inputs):
        if tensor.HasField("contents"):
            raise ApiError(400, f"inputs[{index}] has contents and raw_input_contents is used: send one or the other")
    try:
        return parsed, [binary.decode(r, t.datatype, list(t.shape), f"inputs[{i}]")
                        for i, (t, r) in enumerate(zip(request.inputs, raw, strict=True))]
    except binary.BinaryDataError as exc:
        raise ApiError(400, str(exc)) from None


def _tensor_metadata(spec: dict[str, Any]) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six methods of ``inference.GRPCInferenceService``, on the routes of a REST app."""

    def __init__(self, routes: _Routes, digest: str, token: str | None) -> None:
        self.routes = routes
        self.model = routes.model
        self.token = token.encode() if token is not None else None
        self.trailer = (("x-model-version", routes.version), ("x-model-digest", digest))

    async def _call(self, method: str, context: grpc.aio.ServicerContext, answer: Callable[[], Awaitable[Any]],
                    *, open_: bool = False) -> Any:
        """Authenticate (unless ``open_``), answer, map errors to status codes, count."""
        context.set_trailing_metadata(self.trailer)
        try:
            if self.token is not None and not open_:
                values = [v.encode() if isinstance(v, str) else v
                          for k, v in context.invocation_metadata() or () if k == "authorization"]
                refused = unauthorized(self.token, values)
                if refused is not None:
                    raise ApiError(401, refused[0])
            result = await answer()
        except ApiError as exc:
            code, message = STATUS.get(exc.status_code, grpc.StatusCode.INTERNAL), exc.message
        except Exception:  # the detail goes to the log only, under an id the client can quote
            error_id = str(uuid.uuid4())
            logger.exception("internal error %s on gRPC %s", error_id, method)
            code, message = grpc.StatusCode.INTERNAL, f"internal error, id {error_id}"
        else:
            self._count(method, grpc.StatusCode.OK)
            return result
        self._count(method, code)
        await context.abort(code, message)

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self.routes.metrics.requests.labels(endpoint=f"grpc:{method}", status_code=code.name).inc()

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 (gRPC names)
        async def answer() -> Any:
            return pb.ServerLiveResponse(live=True)
        return await self._call("ServerLive", context, answer, open_=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def answer() -> Any:
            return pb.ServerReadyResponse(ready=True)
        return await self._call("ServerReady", context, answer, open_=True)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def answer() -> Any:
            if request.version:
                self.routes.model_version_ready(request.name, request.version)
            else:
                self.routes.model_ready(request.name)
            return pb.ModelReadyResponse(ready=True)
        return await self._call("ModelReady", context, answer)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def answer() -> Any:
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))
        return await self._call("ServerMetadata", context, answer)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def answer() -> Any:
            if request.version:
                meta = self.routes.model_version_metadata(request.name, request.version)
            else:
                meta = self.routes.model_metadata(request.name)
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[_tensor_metadata(s) for s in meta["inputs"]],
                outputs=[_tensor_metadata(s) for s in meta["outputs"]],
            )
        return await self._call("ModelMetadata", context, answer)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def answer() -> Any:
            if request.model_version:
                self.routes.model_version_ready(request.model_name, request.model_version)
            else:
                self.routes.model_ready(request.model_name)
            return await asyncio.to_thread(self._infer, request)
        return await self._call("ModelInfer", context, answer)

    def _infer(self, request: Any) -> Any:
        parsed, values = parse_request(request, self.routes.limits.max_rows)
        started = time.perf_counter()
        results = predict_request(self.model, parsed, values)
        specs = {o.name: o.datatype for o in self.model.outputs}
        response = pb.ModelInferResponse(
            model_name=self.model.name, model_version=self.routes.version, id=request.id or str(uuid.uuid4()),
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=n, datatype=specs[n], shape=a.shape)
                     for n, a in results.items()],
            raw_output_contents=[binary.encode(a, specs[n]) for n, a in results.items()],
        )
        self.routes.metrics.latency.observe(time.perf_counter() - started)
        return response


async def start_grpc(app: FastAPI, *, host: str, port: int, digest: str, token: str | None) -> grpc.aio.Server:
    """Start serving the model of ``app`` over gRPC on ``host:port`` (on the running event loop).

    :raises GrpcBindError: the port cannot be bound.
    """
    routes = app.state.routes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", routes.limits.max_body_bytes),
        ("grpc.max_send_message_length", -1),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(routes, digest, token), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise GrpcBindError(f"cannot bind the gRPC port {address}: {exc}") from None
    if not bound:
        raise GrpcBindError(f"cannot bind the gRPC port {address}")
    await server.start()
    return server


async def serve_with_grpc(server: uvicorn.Server, app: FastAPI, *, host: str, port: int, digest: str,
                          token: str | None, graceful: float) -> None:
    """Serve gRPC beside uvicorn's HTTP ``server`` on one event loop; gRPC stops (letting its calls finish
    for up to ``graceful`` seconds) once HTTP has shut down, also when a signal ends it."""
    grpc_server = await start_grpc(app, host=host, port=port, digest=digest, token=token)
    try:
        await server.serve()
    finally:
        await grpc_server.stop(graceful)
