"""Start, announce and stop services: `mailstack serve [NAME...]`.

All-in-one mode (no names) runs every available service in this process, the
mailstore first; the frontends then call it over gRPC at the address it actually
bound, so what runs embedded is what runs in Kubernetes. On SIGTERM/SIGINT the
frontends stop first (a grace period lets IMAP say `* BYE` and transfers finish),
then the mailstore. A second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mailstack.services.common import certificates, telemetry
from mailstack.services.common.config import Settings
from mailstack.services.common.grpc_client import Identity, IdentityError, identity_for, open_channel
from mailstack.services.common.metrics import MetricsServer
from mailstack.services.common.tls import ensure_self_signed
from mailstack.storage.private_paths import private_dir

log = logging.getLogger("mailstack.lifecycle")

# Adding a service is one entry here: "module:Class", imported only when served.
# Entries whose module does not exist yet are skipped by `serve` (all).
SERVICES: dict[str, str] = {
    "mailstore": "mailstack.services.mailstore.server:MailstoreServer",
    "smtp": "mailstack.services.smtp.server:SmtpServer",
    "imap": "mailstack.services.imap.server:ImapServer",
    "pop3": "mailstack.services.pop3.server:Pop3Server",
    "outbound": "mailstack.services.outbound.server:OutboundWorker",
}
MAILSTORE = "mailstore"

READY_CHECK_TIMEOUT = 2.0  # seconds for the mailstore's health answer to a readiness probe
FRONTEND_GRACE = 10.0  # seconds for frontends to finish sessions (IMAP * BYE, SMTP DATA in flight)
MAILSTORE_GRACE = 5.0  # the frontends are gone by then; only stray admin calls remain


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self, grace: float) -> None: ...
    async def wait_closed(self) -> None: ...


class ServeError(Exception):
    """A reason `mailstack serve` cannot run, worded for the operator."""


def load_service_class(name: str, table: Mapping[str, str] = SERVICES) -> type[Any] | None:
    """The class of a service, or None when its module does not exist (yet).

    An import error inside an existing module is a bug and is raised, not hidden."""
    module_name, _, class_name = table[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            return None
        raise
    cls: type[Any] | None = getattr(module, class_name, None)
    if cls is None:
        raise ServeError(f"{module_name} has no {class_name}")
    return cls


def listeners(name: str, server: Any) -> list[tuple[str, str]]:
    """(description, "host:port") pairs to print for a started service."""
    if hasattr(server, "listeners"):
        # The service's name starts the line already: "mailstore gRPC" is shown as "gRPC".
        return [(d.removeprefix(f"{name} ") or d, a) for d, a in server.listeners]
    if hasattr(server, "address"):
        return [("gRPC", server.address)]
    return []


class Readiness:
    """What /ready answers: every service started, no shutdown begun, each service's own check (the
    mailstore's: its metadata database answers, ADR 0035), and, where frontends run, the mailstore
    answers its gRPC health check (a frontend without it can only say 451/NO)."""

    def __init__(self) -> None:
        self.started = False
        self.stopping = False
        self.mailstore_addr = ""  # set when this process runs frontends
        self.identity: Callable[[], Identity] | None = None  # the mTLS identity of one of them
        self.services: list[Any] = []  # a frontend says whether it is ready (common/frontend.py)
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self) -> bool:
        if not self.started or self.stopping:
            return False
        if not all(getattr(service, "ready", True) for service in self.services):
            return False
        for service in self.services:
            check = getattr(service, "check_ready", None)
            if check is not None and not await check(READY_CHECK_TIMEOUT):
                return False
        if not self.mailstore_addr:
            return True
        if self._channel is None:
            if self.identity is None:
                return False
            try:
                identity = await asyncio.to_thread(self.identity)
            except (OSError, IdentityError) as err:
                log.error("readiness: no gRPC identity: %s", err)
                return False
            self._channel = open_channel(self.mailstore_addr, identity)
        request = health_pb2.HealthCheckRequest(service="mailstack.v1.Mailstore")
        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(request, timeout=READY_CHECK_TIMEOUT)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None


def service_label(names: list[str]) -> str:
    """The OpenTelemetry service name's suffix: "smtp", "imap-pop3", or "all" for the all-in-one mode."""
    return "-".join(names) if names else "all"


def dialable(address: str) -> str:
    """The address a client in this process dials for a bound server address (0.0.0.0 -> 127.0.0.1)."""
    if address.startswith("unix:"):
        return address
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", ""):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "::"):
        return f"[::1]:{port}"
    return address


def prepare_data(settings: Settings, names: list[str], all_in_one: bool) -> str:
    """The data dir (when storage is local) and a self-signed certificate when none is configured.

    Returns the data dir's absolute path, for the banner."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ServeError("set both MAILSTACK_TLS_CERT and MAILSTACK_TLS_KEY, or neither (self-signed)")
    # Only the mail listeners need a certificate; the mailstore and the outbound worker do not.
    serves_frontend = any(n not in (MAILSTORE, "outbound") for n in names)
    if all_in_one or MAILSTORE in names or (serves_frontend and not settings.tls_cert):
        private_dir(settings.data_dir)  # 0700: metadata (password hashes), blobs, the TLS key
    if not settings.tls_cert and (all_in_one or serves_frontend):
        ensure_self_signed(settings.effective_tls_cert, settings.effective_tls_key, settings.hostname)
    if not all_in_one and MAILSTORE not in names and not settings.grpc_cert:
        # Its own data folder would hold a CA of its own, which the mailstore does not trust.
        log.warning(
            "MAILSTACK_GRPC_CERT is not set: calling the mailstore with the identity in %s/grpc, which works "
            "only when that is the mailstore's data folder (else issue one with `mailstack ca issue`)",
            settings.data_dir,
        )
    return str(Path(settings.data_dir).resolve())


async def run_services(
    settings: Settings,
    names: list[str],
    *,
    table: Mapping[str, str] = SERVICES,
    stop_event: asyncio.Event | None = None,
    out: TextIO | None = None,
    mailstore_changes: Mapping[str, Any] | None = None,
) -> None:
    """Run the named services (empty = every available one) until SIGTERM/SIGINT or stop_event.
    mailstore_changes: settings only the mailstore sees (a worker's sibling bus, ADR 0043).

    Raises ServeError when a named service does not exist yet, none is available,
    or a service stops by itself."""
    out = out or sys.stdout
    all_in_one = not names
    wanted = list(table) if all_in_one else list(dict.fromkeys(names))
    for name in wanted:
        if name not in table:
            raise ServeError(f"unknown service {name!r} (known: {', '.join(table)})")
    classes: dict[str, type[Any]] = {}
    for name in wanted:
        cls = load_service_class(name, table)
        if cls is None:
            if not all_in_one:
                raise ServeError(f"{name} is not available yet")
            log.debug("service %s not available yet, skipped", name)
            continue
        classes[name] = cls
    if not classes:
        raise ServeError("no service is available")

    # Before any service starts: module-level tracers and the gRPC channels see the provider.
    telemetry.setup_tracing(service_label([] if all_in_one else list(classes)))
    # Handlers first: a signal that arrives while starting still shuts down cleanly.
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = _install_signal_handlers(loop, stop, out)
    readiness = Readiness()
    metrics: MetricsServer | None = None
    try:
        if settings.metrics_port:
            metrics = MetricsServer(settings.bind, settings.metrics_port, readiness)
            await metrics.start()
            print(f"{'metrics':<10} {'HTTP':<12} {metrics.address} (/metrics /ready)", file=out, flush=True)
        await _serve(settings, classes, all_in_one, stop, out, readiness, mailstore_changes or {})
    finally:
        readiness.stopping = True
        if metrics is not None:
            await metrics.stop()
        await readiness.close()
        await asyncio.to_thread(telemetry.flush)
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _serve(
    settings: Settings,
    classes: dict[str, type[Any]],
    all_in_one: bool,
    stop: asyncio.Event,
    out: TextIO,
    readiness: Readiness | None = None,
    mailstore_changes: Mapping[str, Any] | None = None,
) -> None:
    readiness = readiness or Readiness()
    mailstore_settings = settings.replace(**(mailstore_changes or {}))
    data_dir = await asyncio.to_thread(prepare_data, settings, list(classes), all_in_one)
    # The mailstore first: the frontends need it from their first connection.
    order = sorted(classes, key=lambda n: n != MAILSTORE)
    started: list[tuple[str, Service]] = []
    frontend_settings = settings
    try:
        for name in order:
            server: Service = classes[name](frontend_settings if name != MAILSTORE else mailstore_settings)
            await server.start()
            started.append((name, server))
            if name == MAILSTORE:
                frontend_settings = settings.replace(mailstore_addr=dialable(server.address))  # type: ignore[attr-defined]
            for description, address in listeners(name, server):
                print(f"{name:<10} {description:<12} {address}", file=out, flush=True)
    except BaseException:
        await _stop_all(started)
        raise
    if MAILSTORE in classes:
        print(f"{'data':<10} {'':<12} {data_dir}", file=out, flush=True)
    else:
        print(f"{'mailstore':<10} {'(remote)':<12} {settings.mailstore_addr}", file=out, flush=True)
    if any(name != MAILSTORE for name in classes):
        readiness.mailstore_addr = frontend_settings.mailstore_addr
        caller = next(name for name in classes if name != MAILSTORE)
        readiness.identity = functools.partial(identity_for, frontend_settings, caller)
    readiness.services = [server for _, server in started]
    readiness.started = True

    closed: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(server.wait_closed()): name for name, server in started
    }
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([stop_wait, *closed], return_when=asyncio.FIRST_COMPLETED)
        died = [closed[task] for task in done if task in closed]
        if died and not stop.is_set():
            log.error("service stopped unexpectedly; shutting down", extra={"services": died})
        readiness.stopping = True  # load balancers stop sending new clients while sessions drain
        await _stop_all(started)
        if died and not stop.is_set():
            raise ServeError(f"{', '.join(died)} stopped unexpectedly")
    finally:
        for task in [stop_wait, *closed]:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(stop_wait, *closed, return_exceptions=True)


async def _stop_all(started: list[tuple[str, Service]]) -> None:
    """Frontends together (each with its grace period), then the mailstore."""
    frontends = [(n, s) for n, s in started if n != MAILSTORE]
    mailstore = [(n, s) for n, s in started if n == MAILSTORE]
    for group, grace in ((frontends, FRONTEND_GRACE), (mailstore, MAILSTORE_GRACE)):
        results = await asyncio.gather(*(s.stop(grace) for _, s in group), return_exceptions=True)
        for (name, _), result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                log.error("stopping a service failed", extra={"service": name, "error": repr(result)})


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, out: TextIO) -> list[int]:
    installed: list[int] = []

    def on_signal(sig: int) -> None:
        if stop.is_set():
            if sig == signal.SIGINT:  # the operator insists: no more waiting for sessions to drain
                os._exit(128 + sig)
            return
        print(f"{signal.Signals(sig).name}: shutting down (Ctrl-C again to exit at once)", file=out, flush=True)
        stop.set()

    handlers: list[tuple[int, Callable[..., None], tuple[int, ...]]] = [
        (signal.SIGTERM, on_signal, (signal.SIGTERM,)),
        (signal.SIGINT, on_signal, (signal.SIGINT,)),
        (signal.SIGHUP, certificates.reload_all, ()),  # reload the TLS certificates (and not die of it)
    ]
    for sig, handler, args in handlers:
        try:
            loop.add_signal_handler(sig, handler, *args)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signal support
            continue
        installed.append(sig)
    return installed
