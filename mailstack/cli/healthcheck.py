"""`mailstack healthcheck [SERVICE...]`: the container health check (Docker, compose; Kubernetes
has its own probes). It asks the process's HTTP readiness endpoint (`/ready` on
MAILSTACK_METRICS_PORT), which answers for every service `mailstack serve` runs there, rather than
speaking a mail protocol: a mail port behind MAILSTACK_PROXY_PROTOCOL wants a PROXY header from
127.0.0.1 first (ADR 0007), and a greeting says nothing about the mailstore behind it. Without a
metrics port (the all-in-one default) the mailstore is checked with grpc.health.v1 on the Send API
port (the internal port wants a client certificate, ADR 0009) and each frontend by connecting to
its ports and closing again, sending nothing (so PROXY does not matter; it shows the listener is
up, not that the mailstore answers it). Without names it finds what `mailstack serve` runs in this
container (from /proc)."""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request
from pathlib import Path

from mailstack.services.common.config import Settings

from .output import EXIT_ERROR, EXIT_OK

TIMEOUT = 4.0
PROC = Path("/proc")
CHECKS = ("mailstore", "smtp", "imap", "pop3", "outbound")


def serve_names(proc: Path | None = None) -> list[str] | None:
    """The names given to the `mailstack serve` process found here ([] for the all-in-one), or None."""
    for cmdline in sorted((proc or PROC).glob("[0-9]*/cmdline")):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "serve" in args and any(a.endswith("mailstack") for a in args):
            return [a for a in args[args.index("serve") + 1 :] if a and not a.startswith("-")]
    return None


def served(proc: Path | None = None) -> list[str]:
    """The services of the `mailstack serve` process found here (all-in-one: every checkable one)."""
    names = serve_names(proc)
    if names is None:
        return []
    return names or ["mailstore", "smtp", "imap", "pop3"]


def check_mailstore(settings: Settings) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = settings.send_listen.rpartition(":")[2]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"mailstore health is {reply.status}")


def check_ready(settings: Settings, workers: int = 1) -> None:
    """/ready answers 200 once every service started (a frontend: and the mailstore answers), 503
    before and while draining; urlopen raises on anything but 2xx. With workers each one answers on
    its own port (the metrics port + N, ADR 0043): every one is asked, since the kernel gives each
    worker its share of the connections and a stuck one fails its share."""
    for n in range(workers):
        port = settings.metrics_port + n
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=TIMEOUT).close()
        except Exception as err:
            raise RuntimeError(f"worker {n} (/ready on port {port}): {err}") from None


PORTS = {
    "smtp": ("smtp_port", "submission_port", "submissions_port", "lmtp_port"),
    "imap": ("imap_port", "imaps_port"),
    "pop3": ("pop3_port", "pop3s_port"),
}


def check_listening(settings: Settings, name: str) -> None:
    """Each of the frontend's ports takes a connection (closed at once, nothing sent)."""
    if name not in PORTS:
        raise RuntimeError(f"{name} has no port: set MAILSTACK_METRICS_PORT to ask its /ready")
    host = "127.0.0.1" if settings.bind in ("0.0.0.0", "::", "") else settings.bind
    for field in PORTS[name]:
        port = getattr(settings, field)
        if field == "lmtp_port" and not port:
            continue  # LMTP off
        if not port:
            raise RuntimeError(f"MAILSTACK_{field.upper()} is 0 (any free port): set MAILSTACK_METRICS_PORT")
        with socket.create_connection((host, port), timeout=TIMEOUT):
            pass


def check(settings: Settings, names: list[str], serving: list[str] | None = None) -> None:
    """`serving`: the names the running `serve` was given ([] all-in-one; None: not found here)."""
    if settings.metrics_port:
        from mailstack.services.common.workers import resolve

        # as many workers as that `serve` started from these settings (ADR 0047: auto may be one)
        check_ready(settings, resolve(settings, names if serving is None else serving, probe_ports=False)[0])
        return
    for name in names:
        if name == "mailstore":
            check_mailstore(settings)
        else:
            check_listening(settings, name)


def cmd_healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    serving = serve_names()
    names = args.services or served()
    if not names:
        print("mailstack healthcheck: no `mailstack serve` process found", file=sys.stderr)
        return EXIT_ERROR
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        print(f"mailstack healthcheck: unknown service {unknown[0]!r} (known: {', '.join(CHECKS)})", file=sys.stderr)
        return EXIT_ERROR
    try:
        check(settings, names, serving)
    except Exception as err:  # any failure is "unhealthy", said in one line
        print(f"mailstack healthcheck: {', '.join(names)}: {err}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
