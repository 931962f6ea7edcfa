"""The mailstore's two grpc.aio servers (ADR 0009).

The internal API (Mailstore, Admin, SendAdmin, Outbound) listens on `mailstore_listen`, mTLS only,
each call checked against services/mailstore/authz.py. The service API (Sender: Send and
GetSendStatus, bearer tokens) listens on `send_listen`, so a firewall or NetworkPolicy can open it to
applications without exposing the internal one. Both answer gRPC health checks.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from mailstack.services.common.config import Settings
from mailstack.services.common.folder_lock import FolderLock, lock_path
from mailstack.services.common.grpc_certificates import ReloadingServerCertificate
from mailstack.services.common.grpc_client import SERVER_OPTIONS, identity_for
from mailstack.services.common.grpc_tracing import server_interceptors
from mailstack.services.common.internal_ca import SERVER
from mailstack.services.common.lifecycle import dialable
from mailstack.services.common.local_channel import LocalEndpoint, serve_locally, withdraw
from mailstack.services.common.workers import current_worker
from mailstack.services.mailstore.authz import AuthzInterceptor
from mailstack.services.mailstore.core import MailstoreCore
from mailstack.services.mailstore.forwarding import Forwarding
from mailstack.services.mailstore.redis_probe import RedisProbe, redis_stores
from mailstack.services.mailstore.send_servicer import OutboundServicer, SendAdminServicer, SenderServicer
from mailstack.services.mailstore.sending import Sending
from mailstack.services.mailstore.servicer import AdminServicer, MailstoreServicer
from mailstack.v1 import mailstore_pb2, mailstore_pb2_grpc, send_pb2_grpc

log = logging.getLogger("mailstack.mailstore")

SERVICE_NAMES = ("mailstack.v1.Mailstore", "mailstack.v1.Admin")
SEND_SERVICE_NAMES = ("mailstack.v1.SendAdmin", "mailstack.v1.Outbound")  # send.proto, internal
SENDER_SERVICE = "mailstack.v1.Sender"  # the service port's only service


def _bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> str:
    """Listen on `listen`; the address actually bound (port 0 = any free port)."""
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    if port == 0 and not listen.startswith("unix:"):
        raise OSError(f"cannot listen on {listen}")
    return listen if listen.startswith("unix:") else f"{listen.rsplit(':', 1)[0]}:{port}"


def _send_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Server TLS on the service port when a certificate is set, else plaintext (ADR 0009)."""
    if bool(settings.send_tls_cert) != bool(settings.send_tls_key):
        raise ValueError("set both MAILSTACK_SEND_TLS_CERT and MAILSTACK_SEND_TLS_KEY, or neither")
    if not settings.send_tls_cert:
        return None
    # Read again when the files change (a renewed Secret), ADR 0031.
    return ReloadingServerCertificate(settings.send_tls_cert, settings.send_tls_key).credentials()


class MailstoreServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.core: MailstoreCore | None = None
        self.sending: Sending | None = None
        self._server: grpc.aio.Server | None = None
        self._send_server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._address = ""
        self._send_address = ""
        self._lock: FolderLock | None = None
        self._redis_probe = RedisProbe(redis_stores(settings))
        self._local = LocalEndpoint()  # the same servicers for frontends in this process (ADR 0039)

    @property
    def address(self) -> str:
        """The internal API's address (mTLS)."""
        return self._address

    @property
    def send_address(self) -> str:
        """The service API's address (Sender, bearer tokens)."""
        return self._send_address

    @property
    def listeners(self) -> list[tuple[str, str]]:
        return [("gRPC", self._address), ("Send API", self._send_address)]

    async def start(self) -> None:
        # One mailstore per SQLite database, before anything else; `serve`'s workers share one
        # (ADR 0043): their supervisor holds the lock for them.
        if (path := lock_path(self.settings.effective_metadata_url)) is not None and current_worker() is None:
            self._lock = FolderLock(path)
            await asyncio.to_thread(self._lock.acquire)
        try:
            await self._start()
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def _start(self) -> None:
        # Identities first (the embedded default creates its CA here), before anything listens.
        identity = await asyncio.to_thread(identity_for, self.settings, SERVER)
        send_credentials = await asyncio.to_thread(_send_credentials, self.settings)
        self.core = await MailstoreCore.open(self.settings)
        # Clients ping every 20 s (a dead mailstore is noticed); accept those pings.
        options = [*SERVER_OPTIONS, ("grpc.so_reuseport", int(current_worker() is not None))]  # workers share it
        interceptors = [AuthzInterceptor(), *server_interceptors()]
        server = grpc.aio.server(options=options, interceptors=interceptors)
        mailstore, admin = MailstoreServicer(self.core), AdminServicer(self.core)
        self.sending = sending = Sending.open(self.core)
        mailstore.forwarding = admin.forwarding = Forwarding(self.core, sending)
        sending.deliver_local = mailstore.forwarding.deliver  # submitted mail to a forwarding account too
        send_admin, outbound = SendAdminServicer(sending), OutboundServicer(sending)
        for target in (server, self._local):  # one set of servicers, two transports
            mailstore_pb2_grpc.add_MailstoreServicer_to_server(mailstore, target)  # type: ignore[arg-type]
            mailstore_pb2_grpc.add_AdminServicer_to_server(admin, target)  # type: ignore[arg-type]
            send_pb2_grpc.add_SendAdminServicer_to_server(send_admin, target)  # type: ignore[arg-type]
            send_pb2_grpc.add_OutboundServicer_to_server(outbound, target)  # type: ignore[arg-type]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self.settings.grpc_reflection:  # off by default; the authz table lets only admin use it
            names = [
                *(mailstore_pb2.DESCRIPTOR.services_by_name[n.split(".")[-1]].full_name for n in SERVICE_NAMES),
                *SEND_SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ]
            reflection.enable_server_reflection(names, server)
        send_server = grpc.aio.server(options=options, interceptors=server_interceptors())
        send_pb2_grpc.add_SenderServicer_to_server(SenderServicer(sending), send_server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, send_server)
        try:
            self._address = _bind(server, self.settings.mailstore_listen, identity.server_credentials())
            self._send_address = _bind(send_server, self.settings.send_listen, send_credentials)
            await server.start()
            self._server = server
            await send_server.start()
            self._send_server = send_server
        except BaseException:
            await server.stop(None)
            await send_server.stop(None)
            self._server = self._send_server = None
            await sending.close()
            await self.core.close()
            self.sending = self.core = None
            raise
        for name in ("", *SERVICE_NAMES, *SEND_SERVICE_NAMES, SENDER_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._local.start([AuthzInterceptor(), *server_interceptors()])
        serve_locally(self._local, {self._address, dialable(self._address)})
        self.core.start_background()
        sending.start_background()
        self._redis_probe.start()
        log.info("mailstore listening", extra={"address": self._address, "send_address": self._send_address})

    async def check_ready(self, seconds: float) -> bool:
        """Readiness (/ready): the metadata database answers within `seconds`. A replica that cannot
        reach it can only fail calls; while it is unready, Kubernetes sends them to the others."""
        core = self.core
        if core is None:
            return False
        return await core.metadata_reachable(seconds)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let running calls finish for up to grace seconds, close the backends."""
        await self._health.enter_graceful_shutdown()
        await self._redis_probe.stop()
        withdraw(self._local)
        servers = [s for s in (self._server, self._send_server) if s is not None]
        await asyncio.gather(self._local.stop(grace), *(s.stop(grace) for s in servers))
        if self.sending is not None:
            await self.sending.close()
            self.sending = None
        if self.core is not None:
            await self.core.close()
            self.core = None
        self._release_lock()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
