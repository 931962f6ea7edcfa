"""What each setting allows, as data: config.py names a rule beside each setting it declares.

A rule answers None for a good value, else the problem in a few words; its `allowed` text says
what would be accepted. Both go into the one line an operator sees (config.SettingError). Rules
that look at the machine (files exist, a bind address resolves) are cheap and never connect.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Rule:
    allowed: str
    problem: Callable[[Any], str | None]

    def __call__(self, value: Any) -> str | None:
        try:
            return self.problem(value)
        except (ValueError, UnicodeError):  # urlsplit("redis://[::1"), a NUL byte for getaddrinfo, ...
            return "not understood"


def _empty_ok(rule: Rule) -> Rule:
    return Rule(f"empty, or {rule.allowed}", lambda v: None if v == "" else rule(v))


def between(low: int, high: int | None = None) -> Rule:
    allowed = f"a whole number {low}..{high}" if high is not None else f"a whole number >= {low}"

    def problem(value: int) -> str | None:
        return "out of range" if value < low or (high is not None and value > high) else None

    return Rule(allowed, problem)


PORT = Rule("a port number 0..65535 (0: any free port)", between(0, 65535).problem)
AT_LEAST_0 = between(0)
AT_LEAST_1 = between(1)


def one_of(*words: str, fold_case: bool = False) -> Rule:
    def problem(value: str) -> str | None:
        return None if (value.upper() if fold_case else value) in words else "not one of them"

    return Rule("one of " + ", ".join(words), problem)


MAX_WORKERS = 64  # worker processes of `mailstack serve` (auto: the CPU count, at most AUTO_WORKERS_MAX)
AUTO_WORKERS_MAX = 8


def _workers_problem(value: str) -> str | None:
    if value == "auto":
        return None
    if not value.isdigit():
        return "not a number"
    return None if 1 <= int(value) <= MAX_WORKERS else "out of range"


WORKERS = Rule(
    f"a whole number 1..{MAX_WORKERS}, or auto (the CPU count, at most {AUTO_WORKERS_MAX})", _workers_problem
)


def _hostname_problem(value: str) -> str | None:
    labels = value.rstrip(".").split(".")
    if value and len(value) <= 253 and all(_LABEL.match(label) for label in labels):
        return None
    return "not a host name"


HOSTNAME = Rule("a host name such as mx.example.test", _hostname_problem)
DOMAIN_OR_EMPTY = _empty_ok(Rule("a domain such as example.test", _hostname_problem))
NOT_EMPTY = Rule("a non-empty value", lambda v: None if v.strip() else "empty")


def _bind_host_problem(host: str) -> str | None:
    """An address this machine could listen on: an IP literal or a name that resolves (never DNS for
    something that looks like a dotted number: 999.1.1.1 is a typo, not a name)."""
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not host or all(part.isdigit() for part in host.split(".")) or _hostname_problem(host):
        return "not an IP address or host name"
    try:
        socket.getaddrinfo(host, None, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return "does not resolve"
    return None


BIND_HOST = Rule("an IP address or name of this machine to listen on, e.g. 127.0.0.1, 0.0.0.0, ::", _bind_host_problem)


def split_host_port(value: str) -> tuple[str, str]:
    host, sep, port = value.rpartition(":")
    return (host, port) if sep else (value, "")


def _port_problem(port: str, low: int) -> str | None:
    if not port.isdigit():
        return "no :PORT"
    return None if low <= int(port) <= 65535 else f"port not {low}..65535"


def _listen_problem(value: str) -> str | None:
    if value.startswith("unix:"):
        return None if value[5:] else "no path after unix:"
    host, port = split_host_port(value)
    return _port_problem(port, 0) or _bind_host_problem(host)


LISTEN = Rule("HOST:PORT to listen on (e.g. 127.0.0.1:50051, 0.0.0.0:50051) or unix:/PATH", _listen_problem)


def _dial_problem(value: str) -> str | None:
    if value.startswith("unix:"):
        return None if value[5:] else "no path after unix:"
    if value.startswith("dns:///"):  # several mailstore replicas behind one name (ADR 0035)
        return _host_port_problem(value[len("dns:///") :])
    # or a list of them
    return next(filter(None, (_host_port_problem(part) for part in value.split(","))), None)


def _host_port_problem(value: str) -> str | None:
    host, port = split_host_port(value)
    host_problem = None if host.startswith("[") and host.endswith("]") else _hostname_problem(host)
    if host_problem:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return host_problem
    return _port_problem(port, 1)


DIAL = Rule("HOST:PORT (port 1..65535), dns:///HOST:PORT, HOST:PORT,HOST:PORT... or unix:/PATH", _dial_problem)
HOST_PORT_OR_EMPTY = _empty_ok(Rule("HOST:PORT (port 1..65535)", _host_port_problem))


def url(*schemes: str, empty_ok: bool = False) -> Rule:
    def problem(value: str) -> str | None:
        parts = urlsplit(value)
        if parts.scheme not in schemes or "://" not in value:
            return "unsupported scheme" if "://" in value else "not a URL"
        return None if value.split("://", 1)[1] or parts.scheme == "memory" else "nothing after ://"

    rule = Rule("a URL starting " + ", ".join(f"{s}://" for s in schemes), problem)
    return _empty_ok(rule) if empty_ok else rule


def _file_problem(value: str) -> str | None:
    path = Path(value)
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    return None if os.access(path, os.R_OK) else "not readable by this user"


FILE_OR_EMPTY = _empty_ok(Rule("the path of a readable file", _file_problem))


def _seconds_problem(value: str) -> str | None:
    items = [item.strip() for item in value.split(",")]
    if not value.strip() or any(not item for item in items):
        return "an empty item"
    for item in items:
        try:
            seconds = float(item)
        except ValueError:
            return f"{item!r} is not a number"
        if not seconds >= 0 or seconds == float("inf"):  # NaN fails this too
            return f"{item!r} is not a finite number >= 0"
    return None


SECONDS_LIST = Rule("comma-separated seconds >= 0, e.g. 300,900,3600 (the last repeats)", _seconds_problem)


def _networks_problem(value: str) -> str | None:
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not a network"
    return None


CIDR_LIST = Rule("comma-separated networks, e.g. 10.0.0.0/8,::1/128", _networks_problem)


def _resolver_problem(value: str) -> str | None:
    if value == "dns":
        return None
    if not value.startswith("static:"):
        return "neither dns nor static:..."
    for item in filter(None, (part.strip() for part in value.removeprefix("static:").split(","))):
        domain, _, target = item.partition("=")
        if not domain or _dial_problem(target):
            return f"{item!r} is not DOMAIN=HOST:PORT"
    return None


RESOLVER = Rule("dns, or static:DOMAIN=HOST:PORT,... ('*' = any domain)", _resolver_problem)


def _dkim_problem(value: str) -> str | None:
    for item in filter(None, (part.strip() for part in value.split(","))):
        if "=" not in item and os.path.isdir(item):  # a folder of DOMAIN.SELECTOR.pem (a mounted Secret)
            if problem := _dkim_folder_problem(item):
                return problem
            continue
        domain, _, rest = item.partition("=")
        selector, _, path = rest.partition(":")
        if not domain.strip() or not selector.strip() or not path.strip():
            return f"{item!r} is not DOMAIN=SELECTOR:PATH or a folder"
        if problem := _file_problem(path.strip()):
            return f"{path.strip()}: {problem}"
    return None


def _dkim_folder_problem(folder: str) -> str | None:
    from mailstack.message.dkim_sign import parse_keys

    try:
        parse_keys(folder)
    except (ValueError, OSError) as e:
        return str(e)
    return None


DKIM_KEYS = Rule(
    "empty, or DOMAIN=SELECTOR:/path/key.pem,... or folders of DOMAIN.SELECTOR.pem (readable)", _dkim_problem
)


def rule_for(default: Any) -> Rule | None:
    """The rule of a setting declared without one: whole numbers are counts, sizes or seconds."""
    return AT_LEAST_0 if isinstance(default, int) and not isinstance(default, bool) else None
