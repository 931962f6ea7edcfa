"""`mailstack healthcheck [SERVICE...]`: the container health check (Docker, compose; Kubernetes
has its own probes). It asks the process's HTTP readiness endpoint (`/ready` on
MAILSTACK_METRICS_PORT), which answers for every service `mailstack serve` runs there, rather than
speaking a mail protocol: a mail port behind MAILSTACK_PROXY_PROTOCOL wants a PROXY header from
127.0.0.1 first (ADR 0007), and a greeting says nothing about the mailstore behind it. Without a
metrics port only the mailstore can be checked, with grpc.health.v1 on the Send API port (the
internal port wants a client certificate, ADR 0009). Without names it finds what `mailstack
serve` runs in this container (from /proc)."""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

from mailstack.services.common.config import Settings

from .output import EXIT_ERROR, EXIT_OK

TIMEOUT = 4.0
PROC = Path("/proc")
CHECKS = ("mailstore", "smtp", "imap", "pop3", "outbound")


def served(proc: Path | None = None) -> list[str]:
    """The services of the `mailstack serve` process found here (all-in-one: every checkable one)."""
    for cmdline in sorted((proc or PROC).glob("[0-9]*/cmdline")):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "serve" in args and any(a.endswith("mailstack") for a in args):
            names = [a for a in args[args.index("serve") + 1 :] if a and not a.startswith("-")]
            return names or ["mailstore", "smtp", "imap", "pop3"]
    return []


def check_mailstore(settings: Settings) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = settings.send_listen.rpartition(":")[2]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"mailstore health is {reply.status}")


def check_ready(settings: Settings) -> None:
    """/ready answers 200 once every service started (a frontend: and the mailstore answers), 503
    before and while draining; urlopen raises on anything but 2xx."""
    urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/ready", timeout=TIMEOUT).close()


def check(settings: Settings, names: list[str]) -> None:
    if settings.metrics_port:
        check_ready(settings)  # one endpoint answers for all the process runs
    elif names == ["mailstore"]:
        check_mailstore(settings)
    else:
        raise RuntimeError("MAILSTACK_METRICS_PORT is not set: no /ready to ask (the image sets 9090)")


def cmd_healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    names = args.services or served()
    if not names:
        print("mailstack healthcheck: no `mailstack serve` process found", file=sys.stderr)
        return EXIT_ERROR
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        print(f"mailstack healthcheck: unknown service {unknown[0]!r} (known: {', '.join(CHECKS)})", file=sys.stderr)
        return EXIT_ERROR
    try:
        check(settings, names)
    except Exception as err:  # any failure is "unhealthy", said in one line
        print(f"mailstack healthcheck: {', '.join(names)}: {err}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
