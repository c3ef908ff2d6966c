"""The HTTP application: Open Inference Protocol v2 (REST) for one loaded model, plus ``/metrics``.

Every response carries ``X-Model-Version`` and ``X-Model-Digest``. Client mistakes are answered
with ``400 {"error": "..."}`` naming the field and the fix; unknown models with ``404``.

With a token (:func:`create_app`'s ``token``), every endpoint but :data:`OPEN_PATHS` (the health
probes and ``/metrics``, as KServe and Triton leave them) needs ``Authorization: Bearer <token>``;
anything else is answered ``401`` with ``WWW-Authenticate: Bearer``, before the body is read.
:class:`Limits` bound a request: its body (``413``, checked on ``Content-Length`` and counted while
it streams, so a chunked upload is cut off too), its rows (``413``) and its JSON nesting (``400``).
An unexpected error is answered ``500 {"error": "internal error", "id": ...}``; the detail goes
only to the server's log, under the same id.

Inference also takes and gives tensors as raw bytes after a JSON header (the binary tensor data extension,
:mod:`model_server.binary`); :mod:`model_server.grpc_server` serves the same model over gRPC with
:func:`predict_request`.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from model_server import __version__, binary
from model_server.flavors import DATATYPES, InvalidInput

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from model_server.flavors import LoadedModel, TensorSpec

logger = logging.getLogger(__name__)

SERVER_NAME = "model-delivery-model-server"

#: numpy dtype kinds accepted in request data for each datatype family.
_ACCEPTED_KINDS = {"BOOL": "b", "INT": "iu", "UINT": "iu", "FP": "iuf"}

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
"""Paths answered without a token: probes (kubelet, HAProxy) cannot send one easily, and they
reveal only liveness, the model's name, version and digest, and request counts."""
REALM = "model-server"
EXTENSIONS = ("binary_tensor_data",)
"""Open Inference Protocol extensions declared in server metadata (REST and gRPC alike)."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold; beyond it the server answers 413 (body, rows) or 400 (nesting).

    :param max_body_bytes: the request body, in bytes (``--max-body-bytes``).
    :param max_rows: rows of an input tensor, its ``shape[0]`` (``--max-rows``).
    :param max_json_depth: nesting of JSON arrays and objects (``--max-json-depth``).
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_rows: int = 100_000
    max_json_depth: int = 32


class InferenceInput(BaseModel):
    """One input tensor of an inference request."""

    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    data: list[Any] | None = None  # None: sent as binary data (parameters.binary_data_size)
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    """One output the client asks for."""

    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """An Open Inference Protocol v2 inference request."""

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferenceInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code)


def _example(model: LoadedModel) -> str:
    spec = model.inputs[0]
    width = model.n_features or "n"
    return (
        f'{{"inputs": [{{"name": "{spec.name}", "datatype": "{spec.datatype}", '
        f'"shape": [rows, {width}], "data": [...]}}]}}'
    )


def format_validation_error(exc: ValidationError | RequestValidationError) -> str:
    """Describe pydantic errors as ``field: problem`` pairs, e.g. ``inputs[0].shape: ...``."""
    parts = []
    for err in exc.errors():
        loc = [p for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON ({err.get('msg')})")
            continue
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "request"
        parts.append(f"{field}: {err.get('msg')}")
    return "; ".join(parts)


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (``[[1]]`` is 2), strings ignored; no parsing.

    Only brackets and quotes are kept (escapes dropped first), then strings: what is scanned is a few
    bytes per row, so a 64 MiB body of numbers costs milliseconds.
    """
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    kept = np.frombuffer(_STRING.sub(b"", body.translate(None, _NOT_STRUCTURE)), dtype=np.uint8)
    opens = (kept == ord("[")) | (kept == ord("{"))
    closes = (kept == ord("]")) | (kept == ord("}"))
    steps = opens.astype(np.int64) - closes.astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def _check_spec(inp: InferenceInput, spec: TensorSpec, where: str) -> None:
    """Refuse (400) an input whose datatype or shape does not fit the model's input ``spec``."""
    if inp.datatype != spec.datatype:
        raise ApiError(
            400, f"{where}.datatype is {inp.datatype!r} but input {spec.name!r} expects {spec.datatype!r}"
        )
    shape = inp.shape
    if len(shape) != len(spec.shape) or any(d < 0 for d in shape):
        raise ApiError(
            400,
            f"{where}.shape {shape} does not fit input {spec.name!r} of shape {list(spec.shape)}: "
            "give the actual size of every dimension, e.g. [rows, features]",
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want >= 0 and got != want:
            raise ApiError(
                400,
                f"{where}.shape {shape} has {got} in dimension {axis} but input {spec.name!r} "
                f"needs {want} (shape {list(spec.shape)})",
            )


def _decode_input(inp: InferenceInput, spec: TensorSpec, index: int, values: np.ndarray | None = None) -> np.ndarray:
    """Turn one request input (flat row-major or nested ``data``, or ``values`` decoded from binary data,
    flat) into an array of ``inp.shape``."""
    where = f"inputs[{index}]"
    _check_spec(inp, spec, where)
    shape = inp.shape
    if values is not None:
        array = values
    elif inp.data is None:
        raise ApiError(400, f"{where} has no data: give 'data', or send it as binary data after the JSON header "
                            f"(parameters.binary_data_size and the {binary.HEADER} header)")
    else:
        try:
            array = np.asarray(inp.data)
        except ValueError:
            raise ApiError(
                400, f"{where}.data is ragged: every row must hold the same number of values"
            ) from None
    family = "".join(c for c in spec.datatype if not c.isdigit())
    if array.size and array.dtype.kind not in _ACCEPTED_KINDS[family]:
        raise ApiError(
            400, f"{where}.data must hold only {spec.datatype} numbers (no strings, nulls or mixed types)"
        )
    if array.ndim == 1 and len(shape) > 1:
        if array.size != math.prod(shape):
            raise ApiError(
                400,
                f"{where}.data has {array.size} values but shape {shape} needs {math.prod(shape)} "
                "(flat data is read row-major)",
            )
        array = array.reshape(shape)
    elif list(array.shape) != shape:
        raise ApiError(400, f"{where}.data is nested as {list(array.shape)} but {where}.shape is {shape}")
    return array.astype(DATATYPES[spec.datatype])


def check_rows(request: InferenceRequest, max_rows: int) -> None:
    """Refuse (413, naming the input) an input of more than ``max_rows`` rows."""
    for index, inp in enumerate(request.inputs):
        rows = inp.shape[0] if inp.shape else len(inp.data or ())
        if rows > max_rows:
            raise ApiError(
                413,
                f"inputs[{index}] has {rows} rows; this server takes at most {max_rows} per request "
                "(--max-rows): split it into smaller requests",
            )


Values = list["np.ndarray | None"]
"""Per input: its flat values decoded from binary data, or None (its JSON ``data``)."""


def _parse(body: bytes, model: LoadedModel, limits: Limits, header_length: str | None = None,
           ) -> tuple[InferenceRequest, Values]:
    """Check the nesting, parse and check the rows (off the event loop: a large body takes a while); with
    ``header_length`` (``Inference-Header-Content-Length``), also cut out and decode the binary tensors."""
    try:
        header, data = (body, b"") if header_length is None else binary.split_body(body, header_length)
        depth = json_depth(header)
        if depth > limits.max_json_depth:
            raise ApiError(
                400,
                f"the request body nests JSON {depth} levels deep; this server accepts at most "
                f"{limits.max_json_depth} (--max-json-depth). Expected e.g. {_example(model)}",
            )
        try:
            if header_length is None:
                parsed = InferenceRequest.model_validate_json(header)
            else:
                parsed = InferenceRequest.model_validate(binary.parse_header(header))
        except ValidationError as exc:
            raise ApiError(400, f"{format_validation_error(exc)}. Expected e.g. {_example(model)}") from None
        check_rows(parsed, limits.max_rows)
        return parsed, _binary_inputs(parsed, data, header_length is not None)
    except binary.BinaryDataError as exc:
        raise ApiError(400, str(exc)) from None


def _binary_inputs(request: InferenceRequest, data: bytes, has_header: bool) -> Values:
    sizes = []
    for index, inp in enumerate(request.inputs):
        size = binary.binary_size(inp.parameters, f"inputs[{index}]")
        if size is not None and inp.data is not None:
            raise ApiError(400, f"inputs[{index}] has both 'data' and parameters.binary_data_size: send one")
        if size is not None and not has_header:
            raise ApiError(400, f"inputs[{index}] is sent as binary data (parameters.binary_data_size) but the "
                                f"request has no {binary.HEADER} header giving the length of its JSON part")
        sizes.append(size)
    pieces = binary.split_tensors(data, sizes)
    return [None if raw is None else binary.decode(raw, inp.datatype, inp.shape, f"inputs[{index}]")
            for index, (inp, raw) in enumerate(zip(request.inputs, pieces, strict=True))]


def predict_request(model: LoadedModel, request: InferenceRequest, values: Values | None = None,
                    ) -> dict[str, np.ndarray]:
    """Check a parsed request against ``model`` and predict; the outputs asked for (default: all), by name.

    :param values: per input, its flat values already decoded from raw bytes, or None (its JSON ``data``).
    :raises ApiError: the request does not fit the model (400).
    """
    spec = model.inputs[0]
    names = [i.name for i in request.inputs]
    if names != [spec.name]:
        raise ApiError(
            400,
            f"input names {names} do not match model {model.name!r}: send exactly one input named "
            f"{spec.name!r}, e.g. {_example(model)}",
        )
    features = _decode_input(request.inputs[0], spec, 0, values[0] if values else None)
    wanted = None if request.outputs is None else [o.name for o in request.outputs]
    if wanted is not None:
        unknown = [n for n in wanted if n not in model.output_names]
        if unknown:
            raise ApiError(400, f"unknown output(s) {unknown} in 'outputs': choose from {model.output_names}")
        if len(set(wanted)) != len(wanted):
            raise ApiError(400, f"'outputs' {wanted} names an output twice: ask for each at most once")
    try:
        return model.predict(features, outputs=wanted)
    except InvalidInput as exc:
        raise ApiError(400, str(exc)) from None


def _run_inference(model: LoadedModel, request: InferenceRequest, values: Values | None = None,
                   ) -> tuple[dict[str, Any], list[bytes]]:
    """Predict; the response's ``outputs`` and the raw bytes of those asked for as binary data, in order."""
    results = predict_request(model, request, values)
    asked = {o.name: o.parameters for o in request.outputs or ()}
    specs = {o.name: o for o in model.outputs}
    outputs, blobs = [], []
    for n, a in results.items():
        datatype = specs[n].datatype
        entry: dict[str, Any] = {"name": n, "datatype": datatype, "shape": list(a.shape)}
        try:
            as_binary = binary.wants_binary(request.parameters, asked.get(n), f"outputs[{n!r}]")
        except binary.BinaryDataError as exc:
            raise ApiError(400, str(exc)) from None
        if as_binary:
            blobs.append(binary.encode(a, datatype))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = a.reshape(-1).tolist()
        outputs.append(entry)
    return {"outputs": outputs}, blobs


class _Metrics:
    def __init__(self, model: LoadedModel, version: str, digest: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "model_server_requests",
            "HTTP requests by endpoint (route template) and status code.",
            ["endpoint", "status_code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "model_server_inference_duration_seconds",
            "Time to decode, predict and encode one successful inference request.",
            registry=self.registry,
        )
        info = Info("model_server_model", "The model being served.", registry=self.registry)
        info.info({"name": model.name, "version": version, "digest": digest, "flavor": model.flavor})


def _route_template(app: FastAPI, scope: Scope) -> str:
    partial = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "unmatched"))
    return partial or "unmatched"


class _BodyTooLarge(Exception):
    """The request body went over :attr:`Limits.max_body_bytes` while it was read."""


async def _send_json(send: Send, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    body = JSONResponse(doc).body
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def unauthorized(token: bytes, values: list[bytes]) -> tuple[str, str] | None:
    """None when the ``Authorization`` values (HTTP headers, gRPC metadata) hold the bearer ``token``, else
    (message, WWW-Authenticate value)."""
    if not values:
        return ("authentication required: send the header 'Authorization: Bearer <token>'",
                f'Bearer realm="{REALM}"')
    scheme, _, given = values[0].partition(b" ")
    if len(values) == 1 and scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token):
        return None
    return ("invalid bearer token", f'Bearer realm="{REALM}", error="invalid_token"')


class _Guard:
    """ASGI middleware: the bearer token, then the body limit, both before the endpoint reads anything.

    :param app: the application it guards.
    :param token: the token every path but :data:`OPEN_PATHS` needs; None: no authentication.
    :param max_body_bytes: the largest request body; a larger one is cut off with 413.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.max_body_bytes = max_body_bytes

    def _unauthorized(self, scope: Scope) -> tuple[str, str] | None:
        """None when the request may pass, else (message, WWW-Authenticate value)."""
        if self.token is None or scope["path"] in OPEN_PATHS:
            return None
        return unauthorized(self.token, [v for k, v in scope["headers"] if k == b"authorization"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self._unauthorized(scope)
        if refused is not None:
            await _send_json(send, 401, {"error": refused[0]}, {"WWW-Authenticate": refused[1]})
            return
        lengths = [v for k, v in scope["headers"] if k == b"content-length"]
        try:
            declared = int(lengths[0]) if lengths else None
        except ValueError:
            await _send_json(send, 400, {"error": f"Content-Length {lengths[0][:40]!r} is not a number"},
                             {"Connection": "close"})
            return
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send, f"{declared} bytes")
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if started:
                raise
            await self._too_large(send, f"more than {self.max_body_bytes} bytes")

    async def _too_large(self, send: Send, size: str) -> None:
        message = (f"the request body has {size}; this server accepts at most {self.max_body_bytes} "
                   "(--max-body-bytes): send fewer rows per request")
        await _send_json(send, 413, {"error": message}, {"Connection": "close"})


def _install_handlers(app: FastAPI, metrics: _Metrics, version: str, digest: str) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status_code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, format_validation_error(exc))

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        endpoint = _route_template(app, request.scope)
        try:
            response = await call_next(request)
        except Exception:  # the detail goes to the log only, under an id the client can quote
            error_id = str(uuid.uuid4())
            logger.exception("internal error %s on %s %s", error_id, request.method, request.url.path)
            response = JSONResponse({"error": "internal error", "id": error_id}, status_code=500)
        response.headers["X-Model-Version"] = version
        response.headers["X-Model-Digest"] = digest
        if app.state.draining:  # traffic moved elsewhere: make keep-alive clients reconnect (to the new server)
            response.headers["Connection"] = "close"
        metrics.requests.labels(endpoint=endpoint, status_code=str(response.status_code)).inc()
        return response


class _Routes:
    """The endpoint functions, bound to one model."""

    def __init__(self, model: LoadedModel, version: str, metrics: _Metrics, limits: Limits) -> None:
        self.model = model
        self.version = version
        self.metrics = metrics
        self.limits = limits

    def _check(self, name: str, requested_version: str | None = None) -> None:
        if name != self.model.name:
            raise ApiError(404, f"unknown model {name!r}: this server serves {self.model.name!r}")
        if requested_version is not None and requested_version != self.version:
            raise ApiError(
                404, f"model {name!r} has no version {requested_version!r}; available: [{self.version!r}]"
            )

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def live(self) -> dict[str, bool]:
        return {"live": True}

    def ready(self) -> dict[str, bool]:
        return {"ready": True}

    def _metadata(self, name: str, model_version: str | None) -> dict[str, Any]:
        self._check(name, model_version)
        return {
            "name": self.model.name,
            "versions": [self.version],
            "platform": self.model.flavor,
            "inputs": [s.as_dict() for s in self.model.inputs],
            "outputs": [s.as_dict() for s in self.model.outputs],
        }

    def model_metadata(self, name: str) -> dict[str, Any]:
        return self._metadata(name, None)

    def model_version_metadata(self, name: str, model_version: str) -> dict[str, Any]:
        return self._metadata(name, model_version)

    def model_ready(self, name: str) -> dict[str, Any]:
        self._check(name)
        return {"name": self.model.name, "ready": True}

    def model_version_ready(self, name: str, model_version: str) -> dict[str, Any]:
        self._check(name, model_version)
        return {"name": self.model.name, "ready": True}

    async def _infer(self, request: Request, name: str, model_version: str | None) -> Response:
        self._check(name, model_version)
        body = await request.body()
        header_length = request.headers.get(binary.HEADER)
        parsed, values = await run_in_threadpool(_parse, body, self.model, self.limits, header_length)
        started = time.perf_counter()
        result, blobs = await run_in_threadpool(_run_inference, self.model, parsed, values)
        self.metrics.latency.observe(time.perf_counter() - started)
        document = {"model_name": self.model.name, "model_version": self.version,
                    "id": parsed.id or str(uuid.uuid4()), **result}
        if not blobs:
            return JSONResponse(document)
        header = bytes(JSONResponse(document).body)
        return Response(binary.join_body(header, blobs), media_type="application/octet-stream",
                        headers={binary.HEADER: str(len(header))})

    async def model_infer(self, request: Request, name: str) -> Response:
        return await self._infer(request, name, None)

    async def model_version_infer(self, request: Request, name: str, model_version: str) -> Response:
        return await self._infer(request, name, model_version)

    def prometheus(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(
    model: LoadedModel, *, version: str, digest: str, token: str | None = None, limits: Limits | None = None
) -> FastAPI:
    """Build the Open Inference Protocol v2 application serving ``model``.

    :param model: the loaded model.
    :param version: the model version reported in metadata, responses and headers.
    :param digest: the artifact digest (``sha256:<hex>``) reported in headers and metrics.
    :param token: the bearer token every path but :data:`OPEN_PATHS` requires; None: no authentication.
    :param limits: what one request may hold (default: :class:`Limits`'s defaults).
    """
    if token is not None and not token:
        raise ValueError("the token must not be empty: pass None for no authentication")
    limits = limits or Limits()
    app = FastAPI(title=f"{SERVER_NAME}: {model.name}", version=__version__)
    metrics = _Metrics(model, version, digest)
    app.state.model = model
    app.state.metrics_registry = metrics.registry
    app.state.draining = False  # set by SIGUSR1, cleared by SIGUSR2 (python -m model_server)
    # Added first, so it runs inside _observe: its 401 and 413 answers get the headers and are counted.
    app.add_middleware(_Guard, token=token, max_body_bytes=limits.max_body_bytes)
    _install_handlers(app, metrics, version, digest)
    routes = _Routes(model, version, metrics, limits)
    app.state.routes = routes  # model_server.grpc_server serves the same model, limits and metrics
    versioned = "/v2/models/{name}/versions/{model_version}"
    table: list[tuple[str, Callable[..., Any], str]] = [
        ("/v2", routes.server_metadata, "GET"),
        ("/v2/health/live", routes.live, "GET"),
        ("/v2/health/ready", routes.ready, "GET"),
        ("/v2/models/{name}", routes.model_metadata, "GET"),
        (versioned, routes.model_version_metadata, "GET"),
        ("/v2/models/{name}/ready", routes.model_ready, "GET"),
        (f"{versioned}/ready", routes.model_version_ready, "GET"),
        ("/v2/models/{name}/infer", routes.model_infer, "POST"),
        (f"{versioned}/infer", routes.model_version_infer, "POST"),
        ("/metrics", routes.prometheus, "GET"),
    ]
    for path, endpoint, method in table:
        app.add_api_route(path, endpoint, methods=[method])
    return app
