"""Fault injection for one fleet host: a model server that never becomes ready.

Used as the host's ``model_server_wrapper`` (a command prefix the role puts before
``python -m model_server ...``):

    python ansible_fault.py --fault-file FILE -- <the real server command>

``FILE`` holds ``{"healthy_digests": [...]}``. A server started for one of those digests
runs normally (the wrapper execs the real command); any other digest gets a stand-in
that binds the same port and answers every request, ``/v2/health/ready`` included, with
503 until it is stopped: the host can go back to what it served, but never serves the new
version.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class NeverReady(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b'{"error": "injected fault: this server never becomes ready"}'
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer  # noqa: N815 - http.server's naming
    do_POST = _answer  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass  # every health probe would flood the log


def _arg(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault-file", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    healthy = json.loads(args.fault_file.read_text()).get("healthy_digests", []) if args.fault_file.exists() else None
    if healthy is None or _arg(command, "--digest") in healthy:
        os.execvp(command[0], command)
    server = ThreadingHTTPServer((_arg(command, "--host"), int(_arg(command, "--port"))), NeverReady)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    print(f"fault stub: never ready for {_arg(command, '--digest')}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
