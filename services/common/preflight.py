"""What `mailstack serve` checks after the settings and before anything listens: every port it is
about to open is its own and free, and no other mailstore holds the data folder.

A port taken by another process is the commonest first-day failure (a second `mailstack serve`,
an old one still running); told only by the listener that fails, it comes after other services
have started, as an OverflowError or as gRPC's advice about GRPC_VERBOSITY. Here it is one line
naming the port and the setting that moves it. Binding and closing again is not a reservation:
a port taken in between still fails at its listener, with the same message (PortProblem).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from mailstack.services.common.config import Settings, env_name
from mailstack.services.common.folder_lock import FolderLock, lock_path
from mailstack.services.common.setting_rules import split_host_port

# The settings naming each service's listening ports (the mailstore's are HOST:PORT addresses).
PORT_SETTINGS: dict[str, tuple[str, ...]] = {
    "mailstore": ("mailstore_listen", "send_listen"),
    "smtp": ("smtp_port", "submission_port", "submissions_port"),
    "imap": ("imap_port", "imaps_port"),
    "pop3": ("pop3_port", "pop3s_port"),
}


class PortProblem(Exception):
    """A port that cannot be listened on: one line for the operator."""


class PortClash(Exception):
    """Two settings give one port: a settings error."""


@dataclass(frozen=True)
class Port:
    setting: str
    host: str
    port: int
    reuse_port: bool = False  # SO_REUSEPORT: several processes of a frontend share it on purpose


def ports(settings: Settings, services: Iterable[str]) -> list[Port]:
    """The TCP ports the services will listen on (port 0, "any free port", and unix sockets left out)."""
    found: list[Port] = []
    for service in services:
        for name in PORT_SETTINGS.get(service, ()):
            value = getattr(settings, name)
            if isinstance(value, int):
                found.append(Port(name, settings.bind, value, settings.reuse_port))
            elif not value.startswith("unix:"):
                host, port = split_host_port(value)
                found.append(Port(name, host.strip("[]"), int(port)))
    if settings.metrics_port:
        found.append(Port("metrics_port", settings.bind, settings.metrics_port))
    return [p for p in found if p.port]


def check_clashes(found: list[Port]) -> None:
    seen: dict[int, Port] = {}
    for p in found:
        other = seen.setdefault(p.port, p)
        if other is not p:
            raise PortClash(
                f"{env_name(p.setting)}={p.port}: {env_name(other.setting)} has that port too; "
                "allowed: a port of its own for each listener"
            )


def in_use_message(p: Port, err: OSError) -> str:
    """The line for a port that cannot be bound, naming the setting that moves it."""
    where = f"{p.host}:{p.port}"
    if err.errno == errno.EADDRINUSE:
        return (
            f"port {p.port} ({where}) is in use: another mailstack is probably running (stop it), "
            f"or move this one with {env_name(p.setting)}"
        )
    if err.errno == errno.EACCES:
        return (
            f"port {p.port} ({where}, {env_name(p.setting)}) needs root or CAP_NET_BIND_SERVICE; "
            "choose a port >= 1024 or grant the capability"
        )
    if err.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where} ({env_name(p.setting)}): {p.host} is no address of this machine"
    return f"cannot listen on {where} ({env_name(p.setting)}): {err.strerror or err}"


def try_bind(p: Port) -> None:
    """Bind as the listener will (SO_REUSEADDR, SO_REUSEPORT when shared) and close; PortProblem if not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            p.host, p.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise PortProblem(f"cannot listen on {p.host}:{p.port} ({env_name(p.setting)}): {err.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if p.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise PortProblem(in_use_message(p, err)) from None


def preflight(settings: Settings, services: Iterable[str]) -> None:
    """Raise PortClash, PortProblem or FolderInUse before anything starts."""
    services = list(services)
    found = ports(settings, services)
    check_clashes(found)
    if "mailstore" in services and (path := lock_path(settings.effective_metadata_url)) is not None:
        FolderLock(path).probe()
    for p in found:
        try_bind(p)
