"""An HAProxy configuration for the ansible target's fleet: the HTTP frontend and, with ``serving.grpc``, a gRPC one.

The deploy target drives HAProxy through its runtime API only (the role's ``md_haproxy``: drain, maintenance,
ready); the configuration is the operator's. :func:`haproxy_config` writes one that fits the role, to start from
or to compare with (docs/deploy-ansible.md):

- ``frontend <backend>_http`` (``mode http``) to ``backend <backend>``: each host's live port, health-checked on
  the model server's ready path (``/v2/health/ready``, HTTP 200).
- with gRPC, ``frontend <backend>_grpc`` (``bind ... proto h2``: HTTP/2 in clear text, as gRPC clients speak it
  without TLS) to ``backend <grpc_backend>``: each host's live gRPC port (``server ... proto h2``). HAProxy
  proxies at layer 7, so every gRPC call is balanced on its own and a drained server gets no new call even on
  a client's open connection. Its health check is a TCP connect to the gRPC port (``option tcp-check``): the
  model server does not implement grpc.health.v1, and an HTTP/2 check cannot send a gRPC message's binary
  framing; the same server's HTTP readiness is checked in the HTTP backend, both ports being one process.

Both backends name their servers alike (the inventory host names, or each host's ``model_server_lb_server``),
so the role takes a host out of both, and puts it back in both, in one step. The staging instance (the candidate
on ``model_server_staging_port`` and ``model_server_staging_grpc_port``) is in no backend: it never takes
traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True)
class LbServer:
    """One host as the load balancer sees it: its server name, address, live port and live gRPC port."""

    name: str
    address: str
    port: int
    grpc_port: int | None = None


def _check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not an HAProxy name: use letters, digits, '_', '-', '.' and ':'")
    return value


def haproxy_config(*, backend: str, servers: list[LbServer], bind: str, runtime_api: str,
                   grpc_bind: str | None = None, grpc_backend: str | None = None,
                   ready_path: str = "/v2/health/ready", check_interval: str = "1s",
                   timeouts: dict[str, str] | None = None) -> str:
    """The configuration text.

    :param backend: the HTTP backend (``deploy.ansible.load_balancer.backend``, default the model name).
    :param servers: the hosts of the model's group.
    :param bind: ``address:port`` of the HTTP frontend (what ``front_url`` names).
    :param runtime_api: the unix socket of the runtime API (``stats socket ... level admin``).
    :param grpc_bind: ``address:port`` of the gRPC frontend (``grpc_front``); None: no gRPC.
    :param grpc_backend: the gRPC backend (``grpc_backend``; default ``<backend>_grpc``).
    :raises ValueError: a name HAProxy would not take, or gRPC asked of a server without a gRPC port.
    """
    _check_name("backend", backend)
    grpc_backend = _check_name("grpc_backend", grpc_backend or f"{backend}_grpc")
    for server in servers:
        _check_name("server name", server.name)
        if grpc_bind is not None and server.grpc_port is None:
            raise ValueError(f"server {server.name!r} has no gRPC port, and the gRPC frontend needs one on every "
                             "server: set model_server_grpc_port")
    limits = {"connect": "2s", "client": "30s", "server": "30s", "check": "5s", **(timeouts or {})}
    lines = [
        "global",
        f"    stats socket {runtime_api} mode 600 level admin",
        "    maxconn 4000",
        "defaults",
        "    mode http",
        *(f"    timeout {name} {value}" for name, value in limits.items()),
        "    retries 3",
        "    option redispatch 1",
        f"frontend {backend}_http",
        f"    bind {bind}",
        f"    default_backend {backend}",
        f"backend {backend}",
        "    balance roundrobin",
        f"    option httpchk GET {ready_path}",
        "    http-check expect status 200",
        f"    default-server inter {check_interval} fall 2 rise 2",
        *(f"    server {s.name} {s.address}:{s.port} check" for s in servers),
    ]
    if grpc_bind is not None:
        lines += [
            f"frontend {backend}_grpc",
            f"    bind {grpc_bind} proto h2",
            f"    default_backend {grpc_backend}",
            f"backend {grpc_backend}",
            "    balance roundrobin",
            "    option tcp-check",
            "    tcp-check connect",
            f"    default-server inter {check_interval} fall 2 rise 2",
            *(f"    server {s.name} {s.address}:{s.grpc_port} check proto h2" for s in servers),
        ]
    return "\n".join(lines) + "\n"
