"""Which services the test kit knows, where to find them, and whether they answer.

Reachability is a TCP connect plus a cheap protocol check (so a port taken by something else does not
count as the service), with a short timeout, done once per session and service.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mainspring.testing._url import mask_password

__all__ = [
    "REQUIRE_SERVICES_ENV",
    "SERVICES",
    "ServiceSpec",
    "SessionState",
    "configured_url",
    "probe",
    "require_services",
    "unreachable_reason",
]

#: Set to ``1`` to make an unreachable service fail the test instead of skipping it (CI does).
REQUIRE_SERVICES_ENV = "MAINSPRING_REQUIRE_SERVICES"

#: Seconds allowed for the connect and for each read of the reachability check.
PROBE_TIMEOUT = 2.0

_TRUE = frozenset({"1", "true", "yes", "on"})


class _ProbeError(Exception):
    """The peer answered, but not like the service we expected (never leaves this package)."""


def _recv_at_least(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(4096)
        if not chunk:
            raise _ProbeError(f"connection closed by the server after {len(data)} bytes")
        data += chunk
    return data


def _probe_postgres(sock: socket.socket) -> None:
    # An SSLRequest is the cheapest message every PostgreSQL answers with one byte, 'S' or 'N'.
    sock.sendall(struct.pack("!ii", 8, 80877103))
    reply = _recv_at_least(sock, 1)[:1]
    if reply not in (b"S", b"N"):
        raise _ProbeError(f"unexpected reply {reply!r} to an SSLRequest; is this PostgreSQL?")


def _probe_mysql(sock: socket.socket) -> None:
    # The server speaks first: a packet header (3-byte length, sequence) and a handshake (protocol 10),
    # or an error packet (0xff) when it refuses this client outright.
    data = _recv_at_least(sock, 5)
    length = int.from_bytes(data[:3], "little")
    kind = data[4]
    if kind == 0xFF:
        if len(data) < 4 + length:
            data += _recv_at_least(sock, 4 + length - len(data))
        # Error packet: 0xff, a 2-byte error code, then the message (no SQL state before the handshake).
        message = data[7 : 4 + length].decode("utf-8", "replace")
        raise _ProbeError(f"the server refused the connection: {message}")
    if kind != 10:
        raise _ProbeError(f"unexpected handshake protocol {kind}; is this MySQL/MariaDB?")


def _probe_redis(sock: socket.socket) -> None:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    reply = _recv_at_least(sock, 5)
    # NOAUTH still proves it is Redis; the credentials in the URL are the driver's business.
    if not reply.startswith((b"+PONG", b"-NOAUTH")):
        raise _ProbeError(f"unexpected reply {reply[:40]!r} to PING; is this Redis?")


def _probe_amqp(sock: socket.socket) -> None:
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    reply = _recv_at_least(sock, 7)
    # A frame of type 1 (method) is Connection.Start; an "AMQP..." reply names a protocol we don't speak.
    if reply[0] != 1:
        raise _ProbeError(f"unexpected reply {reply[:8]!r} to the AMQP 0-9-1 header; is this RabbitMQ?")


def _probe_nats(sock: socket.socket) -> None:
    reply = _recv_at_least(sock, 6)
    if not reply.startswith(b"INFO {"):
        raise _ProbeError(f"unexpected greeting {reply[:40]!r}; is this NATS?")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service the kit provides: its env var, default URL, default port and protocol check."""

    name: str
    env_var: str
    default_url: str
    default_port: int
    check: Callable[[socket.socket], None]


SERVICES: Mapping[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            "postgres",
            "MAINSPRING_TEST_POSTGRES_URL",
            "postgresql://postgres@127.0.0.1:5432/test",
            5432,
            _probe_postgres,
        ),
        ServiceSpec(
            "mariadb", "MAINSPRING_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test", 3306, _probe_mysql
        ),
        ServiceSpec("redis", "MAINSPRING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", 6379, _probe_redis),
        ServiceSpec(
            "rabbitmq",
            "MAINSPRING_TEST_RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:5672/",
            5672,
            _probe_amqp,
        ),
        ServiceSpec("nats", "MAINSPRING_TEST_NATS_URL", "nats://127.0.0.1:4222", 4222, _probe_nats),
    )
}


def configured_url(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Return the URL of service ``name``: its ``MAINSPRING_TEST_<NAME>_URL`` or the default."""
    spec = SERVICES[name]
    env = os.environ if environ is None else environ
    return env.get(spec.env_var) or spec.default_url


def require_services(environ: Mapping[str, str] | None = None) -> bool:
    """Return whether ``MAINSPRING_REQUIRE_SERVICES`` asks for unreachable services to fail tests."""
    env = os.environ if environ is None else environ
    return env.get(REQUIRE_SERVICES_ENV, "").strip().lower() in _TRUE


def probe(name: str, url: str, *, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Check that service ``name`` answers at ``url``; return ``None`` if it does, else what went wrong."""
    spec = SERVICES[name]
    try:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or spec.default_port
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            spec.check(sock)
    except (OSError, ValueError, _ProbeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def unreachable_reason(name: str, url: str, error: str) -> str:
    """The skip/fail message for an unreachable service; the URL is shown without its password."""
    spec = SERVICES[name]
    return (
        f"{name} is not reachable at {mask_password(url)}: {error} "
        f"(start it, or point {spec.env_var} at a running one)"
    )


@dataclass
class SessionState:
    """What the kit remembers for one pytest session: probe results and broken management APIs."""

    reachability: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: Management URLs (masked) that could not be reached, with the error; the fixture then falls back.
    management_down: dict[str, str] = field(default_factory=dict)

    def check(self, name: str, url: str) -> str | None:
        """Probe ``name`` at ``url`` once per session; return the cached error or ``None``."""
        key = (name, url)
        if key not in self.reachability:
            self.reachability[key] = probe(name, url)
        return self.reachability[key]
