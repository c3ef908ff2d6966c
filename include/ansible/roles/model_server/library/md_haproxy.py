#!/usr/bin/python
"""Ansible module: take one server of an HAProxy backend out of rotation, or put it back.

Talks to HAProxy's runtime API (``stats socket ... level admin``) on a unix socket or
``host:port``. ``state: disabled`` drains the server (no new connections), waits until its
current sessions reach 0 (at most ``timeout`` seconds), then puts it in maintenance.
``state: enabled`` makes it ready again and waits until HAProxy's own health check
reports it UP. Check mode reports what would change and changes nothing.
"""

from __future__ import annotations

import socket
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: md_haproxy
short_description: Drain, disable and enable one HAProxy server through the runtime API
description: Drains a server and puts it in maintenance, or makes it ready and waits until it is UP.
options:
  socket:
    description: Path of the runtime API unix socket, or host:port of a TCP runtime API.
    type: str
    required: true
  backend:
    description: Backend name.
    type: str
    required: true
  server:
    description: Server name in the backend.
    type: str
    required: true
  state:
    description: C(disabled) drains then sets maintenance; C(enabled) sets ready and waits for UP.
    type: str
    choices: [disabled, enabled]
    required: true
  timeout:
    description: Seconds to wait for the sessions to drain, or for the server to be UP.
    type: float
    default: 30
author: model-delivery
"""

RETURN = r"""
status:
  description: The server's status as HAProxy reports it at the end (UP, MAINT, DRAIN, DOWN ...).
  type: str
  returned: always
"""


def _send(address: str, command: str) -> str:
    if address.startswith("/") or ":" not in address:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = address
    else:
        host, _, port = address.rpartition(":")
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    with conn:
        conn.settimeout(10)
        conn.connect(target)
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = conn.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def server_stat(address: str, backend: str, server: str) -> dict[str, str]:
    """The ``show stat`` row of one server (status, scur, ...)."""
    text = _send(address, "show stat")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise RuntimeError(f"unexpected answer to 'show stat' from {address}: {text[:200]!r}")
    header = lines[0][2:].split(",")
    backends = set()
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        backends.add(row.get("pxname"))
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    if backend not in backends:
        raise LookupError(f"HAProxy at {address} has no backend {backend!r} (it has {sorted(b for b in backends if b)})")
    raise LookupError(f"backend {backend!r} of HAProxy at {address} has no server {server!r}")


def _set_state(address: str, backend: str, server: str, state: str) -> None:
    answer = _send(address, f"set server {backend}/{server} state {state}").strip()
    if answer:
        raise RuntimeError(f"HAProxy refused 'set server {backend}/{server} state {state}': {answer}")


def _in_rotation(status: str) -> bool:
    return not status.startswith(("MAINT", "DRAIN"))


def _disable(address: str, backend: str, server: str, timeout: float) -> tuple[str, list[str]]:
    warnings = []
    _set_state(address, backend, server, "drain")
    deadline = time.monotonic() + timeout
    row = server_stat(address, backend, server)
    while int(row.get("scur") or 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        row = server_stat(address, backend, server)
    if int(row.get("scur") or 0) > 0:
        warnings.append(f"{row['scur']} session(s) still open on {backend}/{server} after {timeout:g} s of draining")
    _set_state(address, backend, server, "maint")
    return server_stat(address, backend, server)["status"], warnings


def _enable(address: str, backend: str, server: str, timeout: float) -> str:
    _set_state(address, backend, server, "ready")
    deadline = time.monotonic() + timeout
    status = server_stat(address, backend, server)["status"]
    while not (status.startswith("UP") or status == "no check") and time.monotonic() < deadline:
        time.sleep(0.1)
        status = server_stat(address, backend, server)["status"]
    if not (status.startswith("UP") or status == "no check"):
        raise TimeoutError(f"{backend}/{server} was not UP in HAProxy within {timeout:g} s (status {status})")
    return status


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "socket": {"type": "str", "required": True},
            "backend": {"type": "str", "required": True},
            "server": {"type": "str", "required": True},
            "state": {"type": "str", "required": True, "choices": ["disabled", "enabled"]},
            "timeout": {"type": "float", "default": 30.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        status = server_stat(p["socket"], p["backend"], p["server"])["status"]
        up = status.startswith("UP") or status == "no check"
        if p["state"] == "disabled":
            if status.startswith("MAINT"):
                module.exit_json(changed=False, status=status)
            if module.check_mode:
                module.exit_json(changed=True, status=status)
            status, warnings = _disable(p["socket"], p["backend"], p["server"], p["timeout"])
            for warning in warnings:
                module.warn(warning)
            module.exit_json(changed=True, status=status)
        if _in_rotation(status):
            if module.check_mode or up:
                module.exit_json(changed=False, status=status)
        elif module.check_mode:
            module.exit_json(changed=True, status=status)
        changed = not _in_rotation(status)
        status = _enable(p["socket"], p["backend"], p["server"], p["timeout"])
        module.exit_json(changed=changed, status=status)
    except (OSError, LookupError, RuntimeError, TimeoutError, ValueError) as exc:
        module.fail_json(msg=f"HAProxy runtime API {p['socket']}: {exc}")


if __name__ == "__main__":
    main()
