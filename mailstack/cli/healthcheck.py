"""`mailstack healthcheck [SERVICE...]`: the container health check (Docker, compose; Kubernetes
has its own probes). Without names it finds what `mailstack serve` runs in this container (from
/proc) and checks that: the mailstore with grpc.health.v1 on the Send API port (the internal
port wants a client certificate, ADR 0009), a mail frontend by reading its greeting on its main
port, the outbound worker (which has no port) by asking its /ready."""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mailstack.services.common.config import Settings

from .output import EXIT_ERROR, EXIT_OK

TIMEOUT = 4.0
PROC = Path("/proc")
# service: (its port, greeting prefix, goodbye)
GREETINGS: dict[str, tuple[Callable[[Settings], int], bytes, bytes]] = {
    "smtp": (lambda s: s.smtp_port, b"220", b"QUIT\r\n"),
    "imap": (lambda s: s.imap_port, b"* OK", b"a LOGOUT\r\n"),
    "pop3": (lambda s: s.pop3_port, b"+OK", b"QUIT\r\n"),
}


def served(proc: Path | None = None) -> list[str]:
    """The services of the `mailstack serve` process found here (all-in-one: every checkable one)."""
    for cmdline in sorted((proc or PROC).glob("[0-9]*/cmdline")):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "serve" in args and any(a.endswith("mailstack") for a in args):
            names = [a for a in args[args.index("serve") + 1 :] if a and not a.startswith("-")]
            return names or ["mailstore", *GREETINGS]
    return []


def check_mailstore(settings: Settings) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = settings.send_listen.rpartition(":")[2]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"mailstore health is {reply.status}")


def check_greeting(settings: Settings, name: str) -> None:
    port, prefix, goodbye = GREETINGS[name]
    with socket.create_connection(("127.0.0.1", port(settings)), timeout=TIMEOUT) as conn:
        line = conn.makefile("rb").readline(512)
        conn.sendall(goodbye)
    if not line.startswith(prefix):
        raise RuntimeError(f"{name} greeted with {line[:60]!r}")


def check_ready(settings: Settings) -> None:
    """/ready answers 200 once started and while the mailstore answers, 503 while draining."""
    if not settings.metrics_port:
        raise RuntimeError("MAILSTACK_METRICS_PORT is not set: no /ready to ask")
    urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/ready", timeout=TIMEOUT).close()


def check(settings: Settings, name: str) -> None:
    if name == "mailstore":
        check_mailstore(settings)
    elif name == "outbound":
        check_ready(settings)
    else:
        check_greeting(settings, name)


CHECKS = ("mailstore", *GREETINGS, "outbound")


def cmd_healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    names = args.services or served()
    if not names:
        print("mailstack healthcheck: no `mailstack serve` process found", file=sys.stderr)
        return EXIT_ERROR
    for name in names:
        if name not in CHECKS:
            print(f"mailstack healthcheck: unknown service {name!r} (known: {', '.join(CHECKS)})", file=sys.stderr)
            return EXIT_ERROR
        try:
            check(settings, name)
        except Exception as err:  # any failure is "unhealthy", said in one line
            print(f"mailstack healthcheck: {name}: {err}", file=sys.stderr)
            return EXIT_ERROR
    return EXIT_OK
