"""Telemetry against the real services: trace trees across real gRPC, /metrics and /ready over HTTP,
JSON logs carrying the trace id.

The frontends and the mailstore run in this process (one in-memory exporter sees both sides), and
talk gRPC over 127.0.0.1 as in production; clients are smtplib and a raw IMAP socket."""

from __future__ import annotations

import asyncio
import io
import logging
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mailstack.services.common.config import Settings
from mailstack.services.common.lifecycle import run_services
from mailstack.services.common.logs import JsonFormatter
from mailstack.services.common.telemetry import recorded_spans
from mailstack.services.imap.server import ImapServer
from mailstack.services.pop3.server import Pop3Server
from mailstack.v1 import mailstore_pb2 as pb
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.smtp_support import ALICE, smtp_stack
from tests.fixtures.mailstore import deliver, open_client, running_mailstore, settings_for
from tests.fixtures.ports import free_port

MESSAGE = b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: traced\r\n\r\nfollow me\r\n"


def one(spans: list[ReadableSpan], name: str, prefix: bool = False, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name.startswith(name) if prefix or s.name == name if kind in (None, s.kind)]
    assert len(found) == 1, f"{name}: {len(found)} spans among {sorted(s.name for s in spans)}"
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> set[str]:
    assert parent.context is not None
    return {s.name for s in spans if parent_id(s) == parent.context.span_id}


@contextmanager
def json_log(logger: str) -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(logger)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield out
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


# Bodies as files (blob first), and a small body kept in the metadata transaction (ADR 0045).
@pytest.mark.parametrize("kept_body_bytes", [0, 65536])
async def test_smtp_delivery_is_one_trace_into_blob_write_and_event_publish(
    tmp_path: Path, kept_body_bytes: int
) -> None:
    with recorded_spans() as exporter, json_log("mailstack.mailstore") as logs:
        async with smtp_stack(tmp_path, kept_body_bytes=kept_body_bytes) as stack:

            def send() -> None:
                with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=30) as s:
                    assert s.sendmail("bob@remote.test", [ALICE], MESSAGE) == {}

            await asyncio.to_thread(send)
        spans = list(exporter.get_finished_spans())

    transaction = one(spans, "smtp.transaction")
    deliver_call = one(spans, "/mailstack.v1.Mailstore/Deliver", kind=SpanKind.CLIENT)
    deliver_rpc = one(spans, "/mailstack.v1.Mailstore/Deliver", kind=SpanKind.SERVER)
    assert transaction.context is not None and deliver_rpc.context is not None and deliver_call.context is not None
    trace_id = transaction.context.trace_id
    # The frontend's client span is the transaction's child; the mailstore's server span continues
    # it across gRPC (a remote parent), so the time between the two is visible.
    assert deliver_rpc.context.trace_id == deliver_call.context.trace_id == trace_id
    assert parent_id(deliver_call) == transaction.context.span_id
    assert parent_id(deliver_rpc) == deliver_call.context.span_id
    assert deliver_rpc.parent is not None and deliver_rpc.parent.is_remote
    # Blob first, then the metadata transaction, then the event: all under the Deliver RPC.
    stored = {"metadata.deliver", "events.publish"} | ({"blob.put"} if not kept_body_bytes else set())
    assert children(spans, deliver_rpc) >= stored
    assert kept_body_bytes == 0 or "blob.put" not in children(spans, deliver_rpc)
    for name in stored:
        span = one(spans, name)
        assert span.context is not None and span.context.trace_id == trace_id
    if not kept_body_bytes:
        assert one(spans, "blob.put").end_time <= one(spans, "metadata.deliver").start_time  # type: ignore[operator]
    assert dict(transaction.resource.attributes)["service.name"].startswith("mailstack-")  # type: ignore[union-attr]

    # The mailstore's log line inside the RPC carries the same trace id (JSON logs join traces).
    delivered = [line for line in logs.getvalue().splitlines() if '"message": "delivered' in line]
    assert len(delivered) == 1
    assert f'"trace_id": "{trace_id:032x}"' in delivered[0]


async def test_imap_fetch_trace_reaches_the_blob_read(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, imap_port=0, imaps_port=0, allow_plaintext_auth=True)
    with recorded_spans() as exporter:
        async with running_mailstore(settings) as (mailstore, client):
            await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password="pw-alice-1"))
            reply = await deliver(client, [ALICE], MESSAGE)
            assert reply.results[0].status == pb.RECIPIENT_LOCAL
            imap = ImapServer(settings.replace(mailstore_addr=mailstore.address))
            await imap.start()
            try:
                port = int(imap.listeners[0][1].rsplit(":", 1)[1])
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()  # greeting
                transcript = b""
                for tag, command in ((b"a", b"LOGIN alice@example.test pw-alice-1"), (b"b", b"SELECT INBOX"),
                                     (b"c", b"FETCH 1 BODY[]"), (b"d", b"LOGOUT")):  # fmt: skip
                    writer.write(tag + b" " + command + b"\r\n")
                    while not (line := await reader.readline()).startswith(tag + b" ") and line:
                        transcript += line
                    assert line.startswith(tag + b" OK"), line
                assert b"follow me" in transcript
                writer.close()
                await writer.wait_closed()
            finally:
                await imap.stop(1.0)
        spans = list(exporter.get_finished_spans())

    fetch = one(spans, "IMAP FETCH")
    # FETCH reads bodies with FetchBodies (several messages per call) or FetchBody (one).
    body_call = one(spans, "/mailstack.v1.Mailstore/FetchBod", prefix=True, kind=SpanKind.CLIENT)
    body_rpc = one(spans, "/mailstack.v1.Mailstore/FetchBod", prefix=True, kind=SpanKind.SERVER)
    blob_get = one(spans, "blob.get")
    assert fetch.context is not None and body_rpc.context is not None and blob_get.context is not None
    assert body_call.context is not None
    assert parent_id(body_call) == fetch.context.span_id
    assert parent_id(body_rpc) == body_call.context.span_id
    # The IMAP span names the client, the user and whether TLS is on (semantic-convention names).
    attributes = dict(fetch.attributes or {})
    assert attributes["client.address"] == "127.0.0.1" and attributes["enduser.id"] == ALICE
    assert attributes["tls.established"] is False and isinstance(attributes["client.port"], int)
    assert parent_id(blob_get) == body_rpc.context.span_id
    assert {fetch.context.trace_id, body_rpc.context.trace_id, blob_get.context.trace_id} == {fetch.context.trace_id}


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def serving(settings: Settings, names: list[str]) -> tuple[asyncio.Task[None], asyncio.Event, io.StringIO]:
    out, stop = io.StringIO(), asyncio.Event()
    task = asyncio.create_task(run_services(settings, names, stop_event=stop, out=out))
    for _ in range(500):  # the banner's last line is printed once everything listens
        if "data" in out.getvalue() or "(remote)" in out.getvalue() or task.done():
            break
        await asyncio.sleep(0.02)
    assert not task.done(), task.exception()
    return task, stop, out


async def test_metrics_endpoint_counts_deliveries_rejections_and_latency(tmp_path: Path) -> None:
    metrics_port = free_port()
    settings = settings_for(tmp_path, smtp_port=0, submission_port=0, submissions_port=0, metrics_port=metrics_port)
    settings = settings.replace(kept_body_bytes=0)  # the body as a file: its blob put is counted below
    task, stop, out = await serving(settings, ["mailstore", "smtp"])
    try:
        banner = {line.split()[0] + " " + line.split()[1]: line.split()[-1] for line in out.getvalue().splitlines()}
        client = open_client(banner["mailstore gRPC"], settings.data_dir)
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password="pw-alice-1"))
        await client.channel.close()
        smtp_port = int(banner["smtp smtp"].rsplit(":", 1)[1])
        base = f"http://127.0.0.1:{metrics_port}"

        assert await asyncio.to_thread(http_get, base + "/ready") == (200, "ready\n")
        status, before_text = await asyncio.to_thread(http_get, base + "/metrics")
        assert status == 200
        before = samples(before_text)

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
                assert s.sendmail("bob@remote.test", [ALICE], MESSAGE) == {}
                s.mail("bob@remote.test")
                assert s.rcpt("nobody@example.test")[0] == 550
                s.rset()

        await asyncio.to_thread(send)
        after = samples((await asyncio.to_thread(http_get, base + "/metrics"))[1])
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("mailstack_smtp_messages_total", result="accepted", reason="accepted") == 1
    assert moved("mailstack_smtp_messages_total", result="rejected", reason="recipient_unknown") == 1
    assert moved("mailstack_command_duration_seconds_count", protocol="smtp", command="DATA") == 1
    assert moved("mailstack_command_duration_seconds_count", protocol="smtp", command="RCPT") == 2
    assert moved("mailstack_storage_duration_seconds_count", store="blob", operation="put") == 1
    assert moved("mailstack_storage_duration_seconds_count", store="metadata", operation="deliver") == 1
    assert moved("mailstack_storage_duration_seconds_count", store="events", operation="publish") == 1
    # Observations land in the buckets: the +Inf bucket counts every one.
    assert moved("mailstack_storage_duration_seconds_bucket", store="blob", operation="put", le="+Inf") == 1
    assert ("mailstack_sessions", frozenset({("protocol", "smtp")})) in after


async def test_frontend_is_not_ready_while_the_mailstore_is_unreachable(tmp_path: Path) -> None:
    metrics_port = free_port()
    settings = settings_for(
        tmp_path,
        smtp_port=0,
        submission_port=0,
        submissions_port=0,
        metrics_port=metrics_port,
        mailstore_addr=f"127.0.0.1:{free_port()}",  # nothing listens there
    )
    task, stop, _ = await serving(settings, ["smtp"])
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        assert (await asyncio.to_thread(http_get, base + "/ready"))[0] == 503
        assert (await asyncio.to_thread(http_get, base + "/live"))[0] == 200
        assert (await asyncio.to_thread(http_get, base + "/metrics"))[0] == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_pop3_commands_are_spans_and_lease_renewals_are_not(tmp_path: Path) -> None:
    # A lease of 1 s is renewed every third of a second while the session lasts.
    settings = settings_for(tmp_path, pop3_port=0, pop3s_port=0, allow_plaintext_auth=True, pop3_lease_ttl=1)
    with recorded_spans() as exporter:
        async with running_mailstore(settings) as (mailstore, client):
            await client.admin.CreateAccount(pb.CreateAccountRequest(name=ALICE, password="pw-alice-1"))
            await deliver(client, [ALICE], MESSAGE)
            pop3 = Pop3Server(settings.replace(mailstore_addr=mailstore.address))
            await pop3.start()
            try:
                port = int(pop3.listeners[0][1].rsplit(":", 1)[1])
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert (await reader.readline()).startswith(b"+OK")
                for command in (b"USER alice@example.test", b"PASS pw-alice-1", b"STAT"):
                    writer.write(command + b"\r\n")
                    assert (await reader.readline()).startswith(b"+OK"), command
                    if command == b"PASS pw-alice-1":
                        await asyncio.sleep(1.5)  # four renewals or so
                writer.write(b"QUIT\r\n")
                assert (await reader.readline()).startswith(b"+OK")
                writer.close()
                await writer.wait_closed()
            finally:
                await pop3.stop(1.0)
        spans = list(exporter.get_finished_spans())

    # The lease comes with the login (PASS's Login call); its renewals are no one's trace.
    login = one(spans, "/mailstack.v1.Mailstore/Authenticate", kind=SpanKind.CLIENT)
    login_rpc = one(spans, "/mailstack.v1.Mailstore/Authenticate", kind=SpanKind.SERVER)
    assert parent_id(login) == one(spans, "POP3 PASS").context.span_id
    assert parent_id(one(spans, "metadata.acquire_lease")) == login_rpc.context.span_id
    assert not [s for s in spans if s.name.endswith("/AcquireLease")]
    stat = dict(one(spans, "POP3 STAT").attributes or {})
    assert stat["client.address"] == "127.0.0.1" and stat["enduser.id"] == ALICE and stat["tls.established"] is False
