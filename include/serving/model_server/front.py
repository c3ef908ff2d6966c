"""A stable address in front of a model server, for blue-green switching (standard library only).

``python -m model_server.front --host 127.0.0.1 --port N --state FILE`` listens on one address and
pipes every new TCP connection to the upstream named in the JSON state file::

    {"upstream": {"host": "127.0.0.1", "port": 12345}, "...": "other keys are ignored"}

With ``--grpc-port M`` it listens on a second port too, for gRPC (HTTP/2) clients, and pipes each of its
connections to ``grpc_upstream`` (the same server's ``--grpc-port``), written by the same switch::

    {"upstream": {"host": "127.0.0.1", "port": 12345}, "grpc_upstream": {"host": "127.0.0.1", "port": 12346}}

It is a layer-4 forwarder: it does not parse HTTP/2, so a gRPC channel (one long-lived connection carrying
many calls) stays on the server it was opened to until it closes; calls on channels opened after a switch go
to the new server. A server told to drain (SIGUSR1) still answers the calls of its open channels; stop it
after a drain period, as for HTTP, and clients reconnect through the front to the new one.

The state is looked up once per new connection (re-read only when the file's inode, size or
times change). Switching colours is one atomic rewrite of the file (:func:`write_state`): new
connections go to the new upstream, connections already open stay on the old one until they close,
so keep the old server up for a drain period before stopping it, and tell it to drain
(``python -m model_server`` closes keep-alive connections after SIGUSR1). A state that cannot be parsed
(for example a file written in place, half-way) is ignored and the previous upstream kept.

When there is no upstream, or it refuses the connection, the client gets a raw
``HTTP/1.1 503 Service Unavailable`` with a JSON body, and the connection is closed. On the gRPC port the
connection is closed without an answer (gRPC clients report ``UNAVAILABLE`` and retry).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("model_server.front")

BUFFER_SIZE = 64 * 1024
REJECT_IO_TIMEOUT = 2.0


@dataclass(frozen=True)
class Upstream:
    """Where new connections go."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def write_state(
    path: str | os.PathLike[str], upstream_host: str | None, upstream_port: int | None, *,
    grpc_port: int | None = None, **extra: Any
) -> None:
    """Atomically write the front's state file (temporary file in the same directory + ``os.replace``).

    :param path: the state file.
    :param upstream_host: where new connections go; ``None`` (with ``upstream_port=None``) for
        no upstream, so that the front answers 503.
    :param upstream_port: the upstream's TCP port.
    :param grpc_port: the upstream's gRPC port (on ``upstream_host``), where the front's gRPC port forwards;
        None: the front's gRPC port, if it has one, refuses connections.
    :param extra: other JSON-serializable keys to record (the front ignores them), e.g. ``color``.
    """
    if "upstream" in extra or GRPC_KEY in extra:
        raise ValueError("pass the upstream as upstream_host/upstream_port/grpc_port, not as an extra key")
    if (upstream_host is None) != (upstream_port is None):
        raise ValueError("give both upstream_host and upstream_port, or neither (no upstream)")
    if grpc_port is not None and upstream_host is None:
        raise ValueError("a grpc_port needs an upstream_host (the server it is a port of)")
    upstream = grpc = None
    if upstream_host is not None:
        upstream = {"host": upstream_host, "port": upstream_port}
        parse_state({"upstream": upstream})  # refuse to write what the front would not accept
    if grpc_port is not None:
        grpc = {"host": upstream_host, "port": grpc_port}
        parse_state({GRPC_KEY: grpc}, GRPC_KEY)
    doc = {**extra, "upstream": upstream, **({GRPC_KEY: grpc} if grpc else {})}
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable; not possible on every filesystem
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


GRPC_KEY = "grpc_upstream"
"""The key of the state file naming where the front's gRPC port forwards."""


def parse_state(doc: Any, key: str = "upstream") -> Upstream | None:
    """Return the upstream of a state document (``key``: ``upstream``, or :data:`GRPC_KEY` for the gRPC port),
    or ``None`` when it has none.

    :raises ValueError: when the document is not a valid state.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"state must be a JSON object; got {type(doc).__name__}")
    upstream = doc.get(key)
    if upstream is None:
        return None
    host = upstream.get("host") if isinstance(upstream, dict) else None
    port = upstream.get("port") if isinstance(upstream, dict) else None
    if not isinstance(host, str) or not host or not isinstance(port, int) or isinstance(port, bool):
        raise ValueError(f"state {key!r} must be {{'host': str, 'port': int}}; got {upstream!r}")
    if not 0 < port < 65536:
        raise ValueError(f"state {key} port {port} is not a TCP port")
    return Upstream(host, port)


def read_state(path: str | os.PathLike[str], key: str = "upstream") -> Upstream | None:
    """Read and parse a state file (raises ``OSError`` or ``ValueError``); ``key`` as :func:`parse_state`'s."""
    return parse_state(json.loads(Path(path).read_text(encoding="utf-8")), key)


class StateWatcher:
    """The current upstream (of ``key``), re-read from the state file only when the file changed."""

    def __init__(self, path: str | os.PathLike[str], key: str = "upstream") -> None:
        self.path = Path(path)
        self.key = key
        self.upstream: Upstream | None = None
        self.problem = f"state file {self.path} not read yet"
        self._key: tuple[int, ...] | None = None

    def current(self, *, force: bool = False) -> Upstream | None:
        """Return the upstream for a new connection (``None``: no upstream, see :attr:`problem`)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._set(None, f"state file {self.path} does not exist", key=(-1,))
            return None
        except OSError as exc:
            logger.warning("cannot stat %s (%s); keeping upstream %s", self.path, exc, self.upstream)
            return self.upstream
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key == self._key and not force:
            return self.upstream
        try:
            upstream = read_state(self.path, self.key)
        except (OSError, ValueError) as exc:  # includes a half-written file (JSONDecodeError)
            if key != self._key:
                logger.warning(
                    "ignoring unreadable state %s (%s); keeping upstream %s", self.path, exc, self.upstream
                )
            self._key = key
            return self.upstream
        self._set(upstream, f"state file {self.path} names no {self.key}", key=key)
        return upstream

    def _set(self, upstream: Upstream | None, problem: str, key: tuple[int, ...]) -> None:
        if upstream != self.upstream:
            logger.info("%s switched from %s to %s", self.key, self.upstream or "none", upstream or "none")
        elif upstream is None and problem != self.problem:
            logger.info("no upstream: %s", problem)
        self.upstream, self._key = upstream, key
        if upstream is None:
            self.problem = problem


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy bytes until ``src`` ends, then half-close ``dst``."""
    while data := await src.read(BUFFER_SIZE):
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof() and not dst.is_closing():
        with contextlib.suppress(OSError):
            dst.write_eof()


async def _close(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), REJECT_IO_TIMEOUT)


class Front:
    """The proxy: one :meth:`handle` call per client connection.

    :param key: the state's key of the upstream (``upstream``; :data:`GRPC_KEY` for the gRPC port, whose
        refusals close the connection instead of answering HTTP/1.1 503).
    """

    def __init__(self, state_path: str | os.PathLike[str], *, connect_timeout: float = 5.0,
                 key: str = "upstream") -> None:
        self.watcher = StateWatcher(state_path, key)
        self.http = key == "upstream"
        self.connect_timeout = connect_timeout
        self.connections: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pipe one client connection to the current upstream, or answer 503."""
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            streams, problem = await self._connect()
            if streams is None and self.http:
                await self._reject(reader, writer, problem)
            elif streams is None:
                logger.warning("gRPC connection closed: no ready upstream: %s", problem)
            else:
                await self._splice(reader, writer, *streams)
        except (OSError, asyncio.IncompleteReadError) as exc:
            logger.debug("connection ended with %s", exc)
        except Exception:
            logger.exception("unexpected error on a client connection")
        finally:
            await _close(writer)
            if task is not None:
                self.connections.discard(task)

    async def _connect(self) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, str]:
        upstream = self.watcher.current()
        problem = self.watcher.problem
        tried: set[Upstream] = set()
        while upstream is not None and upstream not in tried:
            tried.add(upstream)
            try:
                opened = asyncio.open_connection(upstream.host, upstream.port)
                return await asyncio.wait_for(opened, self.connect_timeout), ""
            except (OSError, asyncio.TimeoutError) as exc:
                problem = f"upstream {upstream} refused the connection ({exc or type(exc).__name__})"
                logger.warning("%s", problem)
            upstream = self.watcher.current(force=True)  # maybe the state switched meanwhile
            if upstream is None:
                problem = self.watcher.problem
        return None, problem

    async def _splice(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        # The upstream closing ends the connection; the client half-closing is passed on, and
        # the upstream's answer still flows back until the upstream closes.
        to_up = asyncio.create_task(_pipe(client_r, up_w))
        to_client = asyncio.create_task(_pipe(up_r, client_w))
        pending: set[asyncio.Task[None]] = {to_up, to_client}
        try:
            while to_client in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if to_up in done and to_up.exception() is not None:
                    break
            if to_client.done() and not to_client.cancelled() and to_client.exception() is not None:
                logger.debug("upstream->client ended with %s", to_client.exception())
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await _close(up_w)

    async def _reject(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, problem: str) -> None:
        body = json.dumps({"error": f"no ready upstream: {problem}", "state_file": str(self.watcher.path)})
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body.encode())}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
        )
        # Read the request head first and the rest after answering, so that closing with unread
        # bytes does not reset the connection before the client has read the answer.
        with contextlib.suppress(OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REJECT_IO_TIMEOUT)
        writer.write(head.encode() + body.encode())
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with asyncio.timeout(REJECT_IO_TIMEOUT):
                while await reader.read(BUFFER_SIZE):
                    pass


async def serve(host: str, port: int, state: str | os.PathLike[str], *, drain_timeout: float = 10.0,
                grpc_port: int | None = None) -> None:
    """Run the front until SIGTERM or SIGINT, then let open connections finish (up to ``drain_timeout``).

    :param grpc_port: also listen here, forwarding to the state's ``grpc_upstream``.
    """
    listeners = [(port, Front(state))]
    if grpc_port is not None:
        listeners.append((grpc_port, Front(state, key=GRPC_KEY)))
    servers = []
    try:
        for listen_port, front in listeners:
            front.watcher.current()
            server = await asyncio.start_server(front.handle, host, listen_port, backlog=1024)
            servers.append(server)
            bound = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
            logger.info("listening on %s (%s), state %s", bound, "HTTP" if front.http else "gRPC", front.watcher.path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for server in servers:
            server.close()
    connections = {task for _, front in listeners for task in front.connections}
    if connections:
        logger.info("stopping: waiting for %d open connection(s)", len(connections))
        await asyncio.wait(connections, timeout=drain_timeout)
    logger.info("stopped")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m model_server.front",
        description="Stable TCP address in front of a model server; the upstream is read from a state file.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument(
        "--state", required=True, help='JSON state file: {"upstream": {"host": ..., "port": ...}}'
    )
    parser.add_argument(
        "--grpc-port", type=int, default=None,
        help="also listen on this port for gRPC clients, forwarding to the state's grpc_upstream",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=10.0, help="seconds, on stop (default: %(default)s)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s model_server.front %(levelname)s %(message)s",
    )
    try:
        asyncio.run(serve(args.host, args.port, args.state, drain_timeout=args.drain_timeout,
                          grpc_port=args.grpc_port))
    except OSError as exc:
        ports = f"{args.port}" + (f" or {args.grpc_port}" if args.grpc_port is not None else "")
        logger.error("cannot listen on %s:%s: %s", args.host, ports, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
