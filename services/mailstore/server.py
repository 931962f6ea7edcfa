"""The mailstore's grpc.aio server: Mailstore + Admin services, health checking, reflection."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from mailstack.services.common.config import Settings
from mailstack.services.common.grpc_client import SERVER_OPTIONS
from mailstack.services.common.grpc_tracing import server_interceptors
from mailstack.services.mailstore.core import MailstoreCore
from mailstack.services.mailstore.send_servicer import OutboundServicer, SendAdminServicer, SenderServicer
from mailstack.services.mailstore.sending import Sending
from mailstack.services.mailstore.servicer import AdminServicer, MailstoreServicer
from mailstack.v1 import mailstore_pb2, mailstore_pb2_grpc, send_pb2_grpc

log = logging.getLogger("mailstack.mailstore")

SERVICE_NAMES = ("mailstack.v1.Mailstore", "mailstack.v1.Admin")
SEND_SERVICE_NAMES = ("mailstack.v1.Sender", "mailstack.v1.SendAdmin", "mailstack.v1.Outbound")  # send.proto


class MailstoreServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.core: MailstoreCore | None = None
        self.sending: Sending | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._address = ""

    @property
    def address(self) -> str:
        return self._address

    @property
    def listeners(self) -> list[tuple[str, str]]:
        return [("gRPC", self._address)]

    async def start(self) -> None:
        self.core = await MailstoreCore.open(self.settings)
        # Clients ping every 20 s (a dead mailstore is noticed); accept those pings.
        server = grpc.aio.server(
            options=[*SERVER_OPTIONS, ("grpc.so_reuseport", 0)],
            interceptors=server_interceptors(),  # a span per RPC, continuing the caller's trace
        )
        mailstore_pb2_grpc.add_MailstoreServicer_to_server(MailstoreServicer(self.core), server)
        mailstore_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.core), server)
        self.sending = sending = Sending.open(self.core)
        send_pb2_grpc.add_SenderServicer_to_server(SenderServicer(sending), server)
        send_pb2_grpc.add_SendAdminServicer_to_server(SendAdminServicer(sending), server)
        send_pb2_grpc.add_OutboundServicer_to_server(OutboundServicer(sending), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [
            *(mailstore_pb2.DESCRIPTOR.services_by_name[n.split(".")[-1]].full_name for n in SERVICE_NAMES),
            *SEND_SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        listen = self.settings.mailstore_listen
        port = server.add_insecure_port(listen)
        if port == 0 and not listen.startswith("unix:"):
            raise OSError(f"cannot listen on {listen}")
        self._address = listen if listen.startswith("unix:") else f"{listen.rsplit(':', 1)[0]}:{port}"
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES, *SEND_SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.core.start_background()
        sending.start_background()
        log.info("mailstore listening on %s", self._address)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let running calls finish for up to grace seconds, close the backends."""
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self.sending is not None:
            await self.sending.close()
            self.sending = None
        if self.core is not None:
            await self.core.close()
            self.core = None

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
