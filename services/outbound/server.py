"""The outbound worker (`mailstack serve outbound`): leases queued messages from the mailstore over
gRPC, delivers them per recipient domain by SMTP, and reports each attempt back (ADR 0008).

Stateless and horizontally scalable: the mailstore's lease keeps two workers from delivering one
message at once, and a killed worker's lease expires so another worker delivers the message
(a message may then arrive twice, never zero times). Retry times, bounces and DSNs are decided
by the mailstore from the reported SMTP replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

import grpc
import grpc.aio
from mailstack.services.common.config import Settings
from mailstack.services.common.frontend import Frontend
from mailstack.services.common.metrics import OUTBOUND_ATTEMPTS
from mailstack.services.common.telemetry import untraced
from mailstack.services.outbound.delivery import Attempt, Outcome, Smarthost, SmtpDelivery
from mailstack.services.outbound.resolver import MxHost, ResolveError, Resolver, open_resolver
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg
from opentelemetry import trace

log = logging.getLogger("mailstack.outbound")
tracer = trace.get_tracer("mailstack.outbound")

RPC_TIMEOUT = 30.0
OUTCOMES = {"delivered": spb.ATTEMPT_DELIVERED, "temporary": spb.ATTEMPT_TEMPORARY, "permanent": spb.ATTEMPT_PERMANENT}


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class OutboundWorker(Frontend):
    grpc_identity = "outbound"
    serves_mail = False  # no listeners: it only calls out

    def __init__(self, settings: Settings, resolver: Resolver | None = None, name: str | None = None) -> None:
        super().__init__(settings)
        self.name = name or worker_name()
        self.resolver = resolver or open_resolver(settings.outbound_resolver)
        smarthost = None
        if settings.outbound_smarthost:
            host, _, port = settings.outbound_smarthost.rpartition(":")
            smarthost = Smarthost(
                MxHost(host, int(port)), settings.outbound_smarthost_user, settings.outbound_smarthost_password
            )
        self.delivery = SmtpDelivery(
            settings.outbound_helo_name or settings.hostname, settings.outbound_connect_timeout, smarthost
        )
        self._stub: spbg.OutboundAsyncStub | None = None
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    @property
    def listeners(self) -> list[tuple[str, str]]:
        return [("worker", self.name)]

    @property
    def address(self) -> str:
        return ""

    async def open(self) -> None:
        assert self.channel is not None
        self._stub = spbg.OutboundStub(self.channel)
        self._loop_task = asyncio.create_task(self._run(), name="outbound-worker")
        log.info("outbound worker started", extra={"worker": self.name, "resolver": self.settings.outbound_resolver})

    async def drain(self, grace: float) -> None:
        """No new leases; deliveries in flight may finish within grace (else their leases expire)."""
        self._stopping.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def release(self) -> None:
        await asyncio.to_thread(self.delivery.pool.close)

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        assert self._stub is not None
        poll = self.settings.outbound_poll_ms / 1000
        capacity = max(1, self.settings.outbound_concurrency)
        while not self._stopping.is_set():
            free = capacity - len(self._inflight)
            leased: list[spb.LeasedMessage] = []
            if free > 0:
                # An idle worker polls every outbound_poll_ms: no trace per poll, on either side. Each
                # leased message is a trace of its own ("outbound.deliver").
                try:
                    with untraced():
                        reply = await self._stub.LeaseOutbound(
                            spb.LeaseOutboundRequest(
                                worker=self.name, max_messages=free, lease_seconds=self.settings.outbound_lease_seconds
                            ),
                            timeout=RPC_TIMEOUT,
                        )
                    leased = list(reply.messages)
                except grpc.aio.AioRpcError as err:
                    log.warning("outbound lease failed", extra={"grpc_code": err.code().name, "detail": err.details()})
            for message in leased:
                task = asyncio.create_task(self._deliver(message), name=f"outbound-{message.message_id}")
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if free > 0 and len(leased) == free:
                continue  # a full batch: more may be due at once
            await self._pause(poll, full=free <= len(leased))

    async def _pause(self, seconds: float, full: bool) -> None:
        """Until stop, the poll interval, or (when every slot is busy) a delivery finishing."""
        waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(self._stopping.wait())]
        if full and self._inflight:
            waiters.append(asyncio.ensure_future(asyncio.wait(set(self._inflight), return_when="FIRST_COMPLETED")))
        _, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

    async def _deliver(self, message: spb.LeasedMessage) -> None:
        with tracer.start_as_current_span(
            "outbound.deliver",
            attributes={"outbound.message_id": message.message_id, "outbound.attempt": message.attempt},
        ):
            await self._fetch_and_deliver(message)

    async def _fetch_and_deliver(self, message: spb.LeasedMessage) -> None:
        assert self._stub is not None
        try:
            chunks = self._stub.FetchOutboundBody(
                spb.FetchOutboundBodyRequest(message_id=message.message_id, worker=self.name), timeout=RPC_TIMEOUT
            )
            data = b"".join([c.data async for c in chunks])
        except grpc.aio.AioRpcError as err:
            log.warning(
                "outbound body not fetched", extra={"message_id": message.message_id, "grpc_code": err.code().name}
            )
            return  # the lease expires and the message is tried again
        groups = [(group.domain, list(group.recipients)) for group in message.domains]
        results = await asyncio.gather(*(self._deliver_domain(message, d, r, data) for d, r in groups))
        attempts = [a for group in results for a in group]
        report = spb.ReportOutboundRequest(
            message_id=message.message_id,
            worker=self.name,
            results=[
                spb.RecipientAttempt(recipient=a.recipient, outcome=OUTCOMES[a.outcome], reply=a.reply,
                                     remote_mta=a.remote_mta)
                for a in attempts
            ],
        )  # fmt: skip
        try:
            await self._stub.ReportOutbound(report, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            # Lease lost or mailstore down: the message is tried again later (a possible duplicate).
            log.warning(
                "outbound report failed",
                extra={"message_id": message.message_id, "grpc_code": err.code().name, "detail": err.details()},
            )

    async def _deliver_domain(
        self, message: spb.LeasedMessage, domain: str, recipients: list[str], data: bytes
    ) -> list[Attempt]:
        with tracer.start_as_current_span(
            "outbound.attempt",
            kind=trace.SpanKind.CLIENT,
            attributes={"outbound.message_id": message.message_id, "outbound.domain": domain,
                        "outbound.recipients": len(recipients), "outbound.attempt": message.attempt},
        ) as span:  # fmt: skip
            try:
                hosts = await self.resolver.mx_hosts(domain)
            except ResolveError as err:
                outcome: Outcome = "permanent" if err.permanent else "temporary"
                attempts = [Attempt(r, outcome, err.reply, "") for r in recipients]
            else:
                attempts = await asyncio.to_thread(self.delivery.deliver, hosts, message.sender, recipients, data)
            for a in attempts:
                OUTBOUND_ATTEMPTS.labels(a.outcome).inc()
            span.set_attribute("outbound.outcomes", ",".join(sorted({a.outcome for a in attempts})))
        log.info(
            "outbound attempt",
            extra={"message_id": message.message_id, "domain": domain, "attempt": message.attempt,
                   "results": {a.recipient: a.reply for a in attempts}},
        )  # fmt: skip
        return attempts
