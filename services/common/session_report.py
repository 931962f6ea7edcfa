"""This process's logged-in sessions, reported to the mailstore every few seconds (`mailstack who`),
and the kick orders it answers with applied (`mailstack kick`). A report replaces the last one and
expires by itself, so a frontend that dies drops out of the directory without a goodbye."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from mailstack.services.common.telemetry import untraced
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

log = logging.getLogger("mailstack.sessions")

TTL_FACTOR = 3  # a report outlives two missed ones


@dataclass(frozen=True)
class LiveSession:
    protocol: str
    account: str
    remote_ip: str
    tls: bool
    started: float
    kick: Callable[[], None]  # close it (with a BYE / -ERR the protocol allows)


def frontend_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def covered(session: LiveSession, order: pb.KickOrder) -> bool:
    return (
        session.account == order.account
        and order.protocol in ("", session.protocol)
        and session.started <= order.before
    )


class SessionReporter:
    def __init__(
        self, stub: pbg.MailstoreAsyncStub, interval: float, sessions: Callable[[], Sequence[LiveSession]]
    ) -> None:
        self.frontend = frontend_name()
        self._stub = stub
        self._interval = interval
        self._sessions = sessions
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._run(), name="session-report")

    async def stop(self) -> None:
        """Stop reporting and withdraw this process's list (best effort: it expires anyway)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(grpc.RpcError, asyncio.TimeoutError):
            request = pb.ReportSessionsRequest(frontend=self.frontend, ttl_seconds=1.0)
            with untraced():
                await self._stub.ReportSessions(request, timeout=1.0)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.report_once()
            except grpc.RpcError as e:  # the mailstore is away: the next report tries again
                log.debug("session report failed: %s", e.code())

    async def report_once(self) -> int:
        """Report, then close what the orders name; how many sessions were closed."""
        live = list(self._sessions())
        request = pb.ReportSessionsRequest(
            frontend=self.frontend,
            ttl_seconds=self._interval * TTL_FACTOR,
            sessions=[
                pb.SessionInfo(
                    protocol=s.protocol, account=s.account, remote_ip=s.remote_ip, tls=s.tls, started=s.started
                )
                for s in live
            ],
        )
        with untraced():  # every few seconds from every frontend: not a trace anyone wants
            reply = await self._stub.ReportSessions(request, timeout=max(self._interval, 1.0))
        closed = 0
        for session in live:
            if any(covered(session, order) for order in reply.kicks):
                log.info("session kicked", extra={"account": session.account, "protocol": session.protocol})
                session.kick()
                closed += 1
        return closed
