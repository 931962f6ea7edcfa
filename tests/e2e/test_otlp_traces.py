"""Traces as an operator's collector sees them: the mailstore, smtp and the outbound worker each run as
their own process (`mailstack serve NAME`) and export over OTLP/gRPC to a real receiver this test
starts. One SMTP delivery is one trace across processes; an idle system exports nothing."""

from __future__ import annotations

import asyncio
import os
import smtplib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from mailstack.v1 import mailstore_pb2 as pb
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.fixtures.mailstore import open_client
from tests.fixtures.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.fixtures.ports import free_port
from tests.fixtures.topology import ServiceProcess, port_open

pytestmark = pytest.mark.slow

ALICE = "alice@example.test"
MESSAGE = b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: traced\r\n\r\nfollow me\r\n"
IDLE_SECONDS = 4.0
CLIENT, SERVER = trace_pb2.Span.SPAN_KIND_CLIENT, trace_pb2.Span.SPAN_KIND_SERVER


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def traced_services(folder: Path, receiver: OtlpReceiver) -> Iterator[dict[str, int]]:
    """mailstore, smtp and outbound as three processes on one data folder, exporting to `receiver`."""
    ports = {"grpc": free_port(), "send": free_port(), "smtp": free_port()}
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSTACK_", "OTEL_"))}
    base = {
        **inherited,
        "MAILSTACK_DATA_DIR": str(folder / "data"),
        "MAILSTACK_MAILSTORE_LISTEN": f"127.0.0.1:{ports['grpc']}",
        "MAILSTACK_MAILSTORE_ADDR": f"127.0.0.1:{ports['grpc']}",
        "MAILSTACK_SEND_LISTEN": f"127.0.0.1:{ports['send']}",
        "MAILSTACK_SMTP_PORT": str(ports["smtp"]),
        "MAILSTACK_SUBMISSION_PORT": str(free_port()),
        "MAILSTACK_SUBMISSIONS_PORT": str(free_port()),
        "MAILSTACK_OUTBOUND_POLL_MS": "100",  # an idle worker asks ten times a second
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    mailstore = ServiceProcess("mailstore", base, {"grpc": ports["grpc"]}, folder / "mailstore.log")
    smtp = ServiceProcess("smtp", base, {"smtp": ports["smtp"]}, folder / "smtp.log")
    outbound = ServiceProcess(
        "outbound", base, {}, folder / "outbound.log", ready=lambda: "outbound worker" in outbound.log_tail()
    )
    with ExitStack() as stack:
        for service in (mailstore, smtp, outbound):  # the mailstore first: it makes the data folder's CA
            stack.callback(service.stop)
            service.start()
        assert port_open(ports["smtp"])
        yield ports


def by_kind(spans: list[ReceivedSpan], name: str, kind: int) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, f"{name}/{kind}: {[(s.service, s.name, s.kind) for s in spans]}"
    return found[0]


async def create_account(grpc_port: int, data_dir: Path) -> None:
    client = open_client(f"127.0.0.1:{grpc_port}", data_dir)
    try:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password="pw-alice-1"))
    finally:
        await client.channel.close()


def test_one_smtp_delivery_is_one_trace_and_an_idle_system_exports_nothing(tmp_path: Path) -> None:
    with otlp_receiver() as receiver, traced_services(tmp_path, receiver) as ports:
        asyncio.run(create_account(ports["grpc"], tmp_path / "data"))
        wait_for(lambda: any(s.name.endswith("/CreateAccount") for s in receiver.spans()), 10, "the admin call's trace")

        # Idle: the worker polls the queue ten times a second, and nobody sees a trace of it.
        time.sleep(0.5)  # what was batched before goes out (OTEL_BSP_SCHEDULE_DELAY)
        receiver.clear()
        time.sleep(IDLE_SECONDS)
        idle = receiver.spans()
        assert idle == [], f"an idle system exported {sorted({(s.service, s.name) for s in idle})}"

        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as client:
            client.ehlo("client.test")
            assert client.sendmail("bob@remote.test", [ALICE], MESSAGE) == {}

        def delivered() -> bool:
            names = {(s.service, s.name, s.kind) for s in receiver.spans()}
            return ("mailstack-mailstore", "/mailstack.v1.Mailstore/Deliver", SERVER) in names and any(
                n[1] == "smtp.transaction" for n in names
            )

        wait_for(delivered, 15, "the delivery's spans")
        time.sleep(0.5)  # the blob and metadata spans may come in a later batch
        spans = receiver.spans()

    transaction = next(s for s in spans if s.name == "smtp.transaction")
    trace = [s for s in spans if s.trace_id == transaction.trace_id]
    call = by_kind(trace, "/mailstack.v1.Mailstore/Deliver", CLIENT)
    rpc = by_kind(trace, "/mailstack.v1.Mailstore/Deliver", SERVER)
    # The frontend's client span is the transaction's child, the mailstore's server span the client's.
    assert (transaction.service, call.service, rpc.service) == (
        "mailstack-smtp",
        "mailstack-smtp",
        "mailstack-mailstore",
    )
    assert call.parent_span_id == transaction.span_id
    assert rpc.parent_span_id == call.span_id
    stored = {s.name for s in trace if s.parent_span_id == rpc.span_id}
    # A small body goes into the metadata transaction (ADR 0045): one storage span, no blob.put.
    assert "metadata.deliver" in stored and "blob.put" not in stored
    # The server span starts after the client span and ends before it (one clock: one machine).
    assert call.span.start_time_unix_nano <= rpc.span.start_time_unix_nano
    assert rpc.span.end_time_unix_nano <= call.span.end_time_unix_nano
    # The protocol span says who connected and how (semantic-convention names).
    attributes = transaction.attributes()
    assert attributes["client.address"] == "127.0.0.1" and isinstance(attributes["client.port"], int)
    assert attributes["tls.established"] is False and "enduser.id" not in attributes  # port 25: no login
    rpc_attributes = rpc.attributes()
    assert (rpc_attributes["rpc.system"], rpc_attributes["rpc.method"]) == ("grpc", "Deliver")
