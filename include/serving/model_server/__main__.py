"""``python -m model_server``: verify an artifact, then serve it over HTTP (and gRPC with ``--grpc-port``).

The artifact is verified against the expected digest before anything else happens: on a
mismatch the error goes to stderr and the process exits with code 3 without binding the port.

Authentication (optional): the bearer token is read from the environment variable
``MODEL_SERVER_TOKEN`` (removed from the environment once read) or from ``--token-file`` (a file
only its owner can read, e.g. mode 0600), never from the command line. With one, every endpoint
but the health probes and ``/metrics`` needs ``Authorization: Bearer <token>``. The token is never
logged. ``--max-body-bytes``, ``--max-rows`` and ``--max-json-depth`` bound a request.

``--grpc-port N`` (0, the default: off) also serves the Open Inference Protocol over gRPC on that port
(``model_server.grpc_server``): same process and event loop, same model, limits and token.

Signals: SIGTERM / SIGINT stop gracefully. SIGUSR1 marks the server *draining*: every
response then carries ``Connection: close``, so a client's keep-alive connection ends after
its current request and the next one is made afresh (through a front, to whatever serves
now). SIGUSR2 clears it. The local deploy target sends them when it switches its front.

Exit codes:

* 0 -- stopped by SIGTERM after a graceful shutdown (130 for SIGINT);
* 1 -- could not serve, for example the port is in use (uvicorn's own exit code 3 is mapped to 1);
* 2 -- bad arguments, including a malformed ``--digest``;
* 3 -- artifact integrity failure: the files do not match the manifest or the expected digest;
* 4 -- unusable artifact: ``serving.json`` invalid, wrong model name, or the model fails to load.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model_server.manifest import ArtifactIntegrityError, parse_digest, verify_directory

if TYPE_CHECKING:
    from collections.abc import MutableMapping

EXIT_FAILURE = 1
EXIT_INTEGRITY = 3
EXIT_UNUSABLE = 4
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
TOKEN_ENV = "MODEL_SERVER_TOKEN"
"""The environment variable a bearer token comes in (the local target sets it; never an argument)."""


class TokenError(ValueError):
    """The token cannot be used; the message never holds the token."""


def read_token(token_file: Path | None, environ: MutableMapping[str, str] | None = None) -> tuple[str | None, str]:
    """The bearer token and where it came from (``"off"`` when none); ``MODEL_SERVER_TOKEN`` is removed
    from ``environ`` (default ``os.environ``), so nothing the server starts inherits it.

    :raises TokenError: both sources are given, the file is readable by others than its owner, or it is empty.
    """
    environ = os.environ if environ is None else environ
    from_env = environ.pop(TOKEN_ENV, None)
    if token_file is None:
        if from_env is not None and not from_env.strip():
            raise TokenError(f"{TOKEN_ENV} is set but empty: unset it (no authentication) or give a token")
        return (from_env.strip(), f"environment variable {TOKEN_ENV}") if from_env is not None else (None, "off")
    if from_env is not None:
        raise TokenError(f"both {TOKEN_ENV} and --token-file are given: give one")
    try:
        mode = token_file.stat().st_mode
        text = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"--token-file {token_file} is readable by others (mode {stat.S_IMODE(mode):o}): "
                         f"chmod 600 {token_file}")
    if not text:
        raise TokenError(f"--token-file {token_file} is empty")
    return text, f"file {token_file}"


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m model_server",
        description="Verify a model artifact against its digest, then serve it (Open Inference Protocol v2).",
    )
    parser.add_argument(
        "--artifact", required=True, type=Path, help="artifact directory (with MANIFEST.json)"
    )
    parser.add_argument("--digest", required=True, help="expected artifact digest, sha256:<64 hex>")
    parser.add_argument("--model-name", required=True, help="model name; must equal serving.json's name")
    parser.add_argument("--model-version", required=True, help="model version to report")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default: %(default)s)")
    parser.add_argument(
        "--grpc-port", type=_port_or_off, default=0,
        help="also serve the Open Inference Protocol over gRPC on this port, on --host (default: 0, off)",
    )
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="default: %(default)s")
    parser.add_argument(
        "--token-file", type=Path, default=None,
        help=f"file holding the bearer token (mode 0600); or set {TOKEN_ENV}. Default: no authentication",
    )
    parser.add_argument(
        "--max-body-bytes", type=_positive, default=None,
        help="largest request body, else 413 (default: 67108864, 64 MiB)",
    )
    parser.add_argument(
        "--max-rows", type=_positive, default=None,
        help="most rows of an input tensor per request, else 413 (default: 100000)",
    )
    parser.add_argument(
        "--max-json-depth", type=_positive, default=None,
        help="deepest nesting of JSON arrays and objects in a request, else 400 (default: 32)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish after SIGTERM (default: %(default)s)",
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def _port_or_off(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, or 0 for off; got {value}")
    return value


def _exit_after_shutdown(signum: int, _frame: object) -> None:
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, restores these handlers, then re-raises the signal.
    _say(f"stopped ({signal.Signals(signum).name})")
    raise SystemExit(0 if signum == signal.SIGTERM else 128 + signum)


def _say(message: str) -> None:
    print(f"model_server: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Verify, load and serve; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_digest(args.digest)
        token, token_source = read_token(args.token_file)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        verify_directory(args.artifact, args.digest)
    except ArtifactIntegrityError as exc:
        _say(f"refusing to start: {exc}")
        return EXIT_INTEGRITY
    _say(f"verified {args.artifact} against {args.digest}")

    # Heavy imports only once the artifact is known to be good.
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from model_server.app import Limits, create_app
    from model_server.flavors import ServingConfigError, load_model, read_serving_config

    try:
        declared = read_serving_config(args.artifact)["name"]
        if declared != args.model_name:
            _say(
                f"refusing to start: {args.artifact}/serving.json declares model {declared!r} "
                f"but --model-name is {args.model_name!r}; deploy the artifact of the model you meant"
            )
            return EXIT_UNUSABLE
        model = load_model(args.artifact)
    except ServingConfigError as exc:
        _say(f"refusing to start: {exc}")
        return EXIT_UNUSABLE
    except Exception as exc:  # the model file itself fails to load (pickle, version skew, ...)
        _say(f"refusing to start: cannot load the model of {args.artifact}: {type(exc).__name__}: {exc}")
        return EXIT_UNUSABLE

    logging.basicConfig(  # our own loggers (the 500s' details); uvicorn configures its own
        stream=sys.stderr,
        level=logging.DEBUG if args.log_level == "trace" else args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    given = {"max_body_bytes": args.max_body_bytes, "max_rows": args.max_rows, "max_json_depth": args.max_json_depth}
    limits = Limits(**{name: value for name, value in given.items() if value is not None})
    app = create_app(model, version=args.model_version, digest=args.digest, token=token, limits=limits)
    _say(f"authentication: {'bearer token from ' + token_source if token else 'off'}; limits: body "
         f"{limits.max_body_bytes} bytes, {limits.max_rows} rows, JSON depth {limits.max_json_depth}; gRPC: "
         f"{f'port {args.grpc_port}' if args.grpc_port else 'off'}")
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        loop="asyncio",
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    server = uvicorn.Server(config)
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    signal.signal(signal.SIGINT, _exit_after_shutdown)
    signal.signal(signal.SIGUSR1, lambda *_: setattr(app.state, "draining", True))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(app.state, "draining", False))
    try:
        if args.grpc_port:
            import asyncio

            from model_server.grpc_server import GrpcBindError, serve_with_grpc

            try:
                asyncio.run(serve_with_grpc(server, app, host=args.host, port=args.grpc_port, digest=args.digest,
                                            token=token, graceful=args.graceful_timeout))
            except GrpcBindError as exc:
                _say(f"could not start serving: {exc}")
                return EXIT_FAILURE
        else:
            server.run()
    except SystemExit as exc:
        # uvicorn exits with its own code 3 when it cannot bind: keep 3 for integrity failures only.
        if exc.code == STARTUP_FAILURE:
            _say(f"could not start serving on {args.host}:{args.port} (see the error above)")
            return EXIT_FAILURE
        raise
    return 0 if server.started else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
