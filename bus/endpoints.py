"""One bus address names the hub; its two sockets derive from it.

- ``tcp://HOST:PORT``: publishers connect to ``PORT`` (the hub's XSUB), subscribers to
  ``PORT + 1`` (the hub's XPUB).
- ``ipc://PATH``: publishers connect to ``ipc://PATH.in``, subscribers to ``ipc://PATH.out``.

Every command takes the same ``--bus`` address, whichever side it talks to.

- ``nats://HOST:PORT`` (or several, comma-separated, for a cluster): NATS JetStream instead of a
  hub (:mod:`bus.nats_backend`); no hub endpoints derive from it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_BUS = "tcp://127.0.0.1:5555"


class BadBusAddress(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class HubEndpoints:
    publishers: str  # where PUB/XPUB sockets connect (hub binds XSUB here)
    subscribers: str  # where SUB sockets connect (hub binds XPUB here)


def hub_endpoints(address: str) -> HubEndpoints:
    if address.startswith("ipc://"):
        path = address[len("ipc://") :]
        if not path:
            raise BadBusAddress(f"bus address {address!r} names no path")
        return HubEndpoints(f"ipc://{path}.in", f"ipc://{path}.out")
    if address.startswith("tcp://"):
        parts = urlsplit(address)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or not 0 < port < 65535:
            raise BadBusAddress(f"bus address {address!r} must be tcp://HOST:PORT with PORT < 65535")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return HubEndpoints(f"tcp://{host}:{port}", f"tcp://{host}:{port + 1}")
    raise BadBusAddress(f"bus address {address!r} must start with tcp://, ipc:// or nats://")


NATS_SCHEME = "nats://"


def is_nats(address: str) -> bool:
    return address.startswith(NATS_SCHEME)


def nats_servers(address: str) -> list[str]:
    """``nats://HOST:PORT[,nats://HOST:PORT...]`` as the list of server URLs; BadBusAddress otherwise."""
    servers = [a.strip() for a in address.split(",")]
    for server in servers:
        parts = urlsplit(server)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "nats" or not parts.hostname or port is None or parts.path not in ("", "/"):
            raise BadBusAddress(f"bus address {server!r} must be nats://HOST:PORT (several: comma-separated)")
    return servers


def check_bus_address(address: str) -> None:
    """Raise BadBusAddress unless ``address`` names a hub or NATS servers."""
    if is_nats(address):
        nats_servers(address)
    else:
        hub_endpoints(address)


def free_bus_address(host: str = "127.0.0.1") -> str:
    """A loopback bus address whose two ports (P, P+1) are free right now (tests, `run`)."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind((host, 0))
            port = a.getsockname()[1]
            if port >= 65534:
                continue
            with socket.socket() as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
            return f"tcp://{host}:{port}"
    raise OSError("no free pair of adjacent loopback ports")
