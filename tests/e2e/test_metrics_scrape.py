"""/metrics as Prometheus scrapes it from a real `mailstack serve` process: the text format and
OpenMetrics by content negotiation, gzip, HEAD; /ready and /live beside it; and the values an
operator watches move with real SMTP, IMAP and POP3 traffic (real clients: smtplib, imaplib, poplib)."""

from __future__ import annotations

import gzip
import http.client
import imaplib
import poplib
import smtplib
import socket
import ssl
import time
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from mailstack import __version__
from tests.e2e.serve_support import ALICE, PASSWORD, add_account, base_env, serving, wait_for
from tests.fixtures.ports import free_port
from tests.fixtures.redis_server import RedisServer

pytestmark = pytest.mark.slow

MESSAGE = b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: counted\r\n\r\nhello\r\n"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
Key = tuple[str, frozenset[tuple[str, str]]]
Samples = dict[Key, float]


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def scrape(port: int) -> Samples:
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200
    return samples(body.decode())


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_exposition_negotiates_openmetrics_gzip_and_head(tmp_path: Path) -> None:
    metrics = free_port()
    env = base_env(tmp_path, metrics_port=str(metrics), smtp_port=str(free_port()),
                   submission_port=str(free_port()), submissions_port=str(free_port()))  # fmt: skip
    with serving(tmp_path, ["mailstore", "smtp"], env, {"metrics": metrics}):
        wait_for(lambda: request(metrics, "GET", "/ready")[0] == 200, 20, "readiness")

        status, headers, body = request(metrics, "GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=")
        assert "content-encoding" not in headers
        text = samples(body.decode())
        assert text[("mailstack_build_info", frozenset({("version", __version__)}))] == 1

        status, headers, body = request(metrics, "GET", "/metrics", {"Accept": OPENMETRICS})
        assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        families = {f.name: f for f in openmetrics_families(body.decode())}  # type: ignore[no-untyped-call]
        assert families["mailstack_connections"].type == "counter"  # OpenMetrics names the family without _total
        assert families["mailstack_outbound_queue_oldest_age_seconds"].type == "gauge"

        status, headers, body = request(metrics, "GET", "/metrics", {"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert ("mailstack_build_info", frozenset({("version", __version__)})) in samples(
            gzip.decompress(body).decode()
        )

        status, headers, body = request(metrics, "HEAD", "/metrics")
        assert status == 200 and body == b"" and headers["content-type"].startswith("text/plain")
        assert int(headers["content-length"]) > 1000  # the length of what GET would send

        # /ready and /live keep their meaning; other methods and paths are refused.
        assert request(metrics, "GET", "/ready")[:1] == (200,)
        assert request(metrics, "HEAD", "/live")[0] == 200
        assert request(metrics, "GET", "/live")[2] == b"ok\n"
        assert request(metrics, "POST", "/metrics")[0] == 405
        assert request(metrics, "GET", "/nothing")[0] == 404


def smtp_traffic(ports: dict[str, int]) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as client:
        client.starttls(context=context)
        assert client.sendmail("bob@remote.test", [ALICE], MESSAGE) == {}
        client.mail("bob@remote.test")
        assert client.rcpt("nobody@example.test")[0] == 550
        client.rset()
        assert client.docmd("NOSUCHCOMMAND")[0] == 500
    # A client that is no TLS client on the implicit-TLS port: a failed handshake.
    with socket.create_connection(("127.0.0.1", ports["submissions"]), timeout=10) as raw:
        raw.sendall(b"EHLO plain.test\r\n" * 200)  # not a ClientHello
        received = b""
        while chunk := raw.recv(4096):  # until the server closes
            received += chunk
        assert b"220" not in received  # no SMTP greeting: the connection never got past TLS
    # Submission (AUTH in the clear is allowed in this test): a remote recipient waits on the queue.
    with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30) as client:
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, ["carol@remote.test"], MESSAGE.replace(b"bob@remote", b"alice@example")) == {}


def imap_pop3_traffic(ports: dict[str, int]) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    imap = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=context, timeout=30)  # implicit TLS
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    with pytest.raises(imaplib.IMAP4.error):
        imap.xatom("NOSUCHCOMMAND")  # BAD, counted as "other"
    imap.logout()
    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
    pop.stls(context)  # RFC 2595 STLS
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    with pytest.raises(poplib.error_proto):
        cast(Any, pop)._shortcmd("NOSUCHCOMMAND")  # poplib sends no unknown command otherwise
    pop.quit()


def test_values_move_with_real_traffic(tmp_path: Path) -> None:
    ports = {
        name: free_port() for name in ("metrics", "smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
    }
    env = base_env(tmp_path, allow_plaintext_auth="true", **{f"{k}_port": str(v) for k, v in ports.items()})
    with serving(tmp_path, ["mailstore", "smtp", "imap", "pop3"], env, {"metrics": ports["metrics"]}):
        wait_for(lambda: request(ports["metrics"], "GET", "/ready")[0] == 200, 20, "readiness")
        add_account(env)
        before = scrape(ports["metrics"])
        assert before[("mailstack_outbound_queue_oldest_age_seconds", frozenset())] == 0
        smtp_traffic(ports)
        imap_pop3_traffic(ports)
        # The queue's depth and age are read off the request path (at most once a second).
        wait_for(lambda: scrape(ports["metrics"])[("mailstack_outbound_queue_depth", frozenset())] == 1, 10, "depth")
        after = scrape(ports["metrics"])
        time.sleep(1.1)
        later = scrape(ports["metrics"])

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    # port 25 and submission; the failed handshake on 465 never became a connection of the protocol
    for protocol, count in (("smtp", 2), ("imap", 1), ("pop3", 1)):
        assert delta("mailstack_connections_total", protocol=protocol) == count, protocol
    assert ("mailstack_sessions", frozenset({("protocol", "imap")})) in after
    assert delta("mailstack_tls_handshakes_total", protocol="smtp", result="ok") == 1  # STARTTLS
    assert delta("mailstack_tls_handshakes_total", protocol="smtp", result="failed") == 1  # port 465
    assert delta("mailstack_tls_handshakes_total", protocol="imap", result="ok") == 1  # 993
    assert delta("mailstack_tls_handshakes_total", protocol="pop3", result="ok") == 1  # STLS
    assert delta("mailstack_commands_total", protocol="pop3", command="STLS", result="ok") == 1
    assert delta("mailstack_commands_total", protocol="smtp", command="RCPT", result="ok") == 2
    assert delta("mailstack_commands_total", protocol="smtp", command="RCPT", result="permanent") == 1
    assert delta("mailstack_commands_total", protocol="smtp", command="STARTTLS", result="ok") == 1
    assert delta("mailstack_commands_total", protocol="smtp", command="other", result="permanent") == 1
    assert delta("mailstack_commands_total", protocol="imap", command="LOGIN", result="ok") == 1
    assert delta("mailstack_commands_total", protocol="imap", command="SELECT", result="ok") == 1
    assert delta("mailstack_commands_total", protocol="imap", command="other", result="bad") == 1
    assert delta("mailstack_commands_total", protocol="pop3", command="STAT", result="ok") == 1
    assert delta("mailstack_commands_total", protocol="pop3", command="other", result="err") == 1
    assert delta("mailstack_command_duration_seconds_count", protocol="pop3", command="STAT") == 1
    assert delta("mailstack_deliveries_total", result="delivered") == 1
    # The queued copy's body; the inbox's small one went into the metadata transaction (ADR 0045).
    assert delta("mailstack_storage_duration_seconds_count", store="blob", operation="put") == 1
    metadata_ops = {dict(k[1])["operation"] for k in after if k[0] == "mailstack_storage_duration_seconds_count"
                    and dict(k[1]).get("store") == "metadata"}  # fmt: skip
    assert {"deliver", "resolve_delivery"} <= metadata_ops
    # One message waits for a worker (none runs): its age grows between scrapes.
    oldest: Key = ("mailstack_outbound_queue_oldest_age_seconds", frozenset())
    assert 0 < after[oldest] < later[oldest]
    assert ("mailstack_redis_up", frozenset({("store", "events")})) not in after  # no Redis configured


def test_redis_and_quota_repair_gauges_follow_an_outage(tmp_path: Path, restartable_redis_server: RedisServer) -> None:
    redis_server = restartable_redis_server
    metrics, smtp = free_port(), free_port()
    env = base_env(tmp_path, metrics_port=str(metrics), smtp_port=str(smtp), submission_port=str(free_port()),
                   submissions_port=str(free_port()), events_url=redis_server.url,
                   quota_url=redis_server.url)  # fmt: skip
    up = {store: ("mailstack_redis_up", frozenset({("store", store)})) for store in ("events", "quota")}
    pending: Key = ("mailstack_quota_repair_pending", frozenset())
    with serving(tmp_path, ["mailstore", "smtp"], env, {"metrics": metrics}):
        wait_for(lambda: request(metrics, "GET", "/ready")[0] == 200, 20, "readiness")
        add_account(env, **{"quota-bytes": "1000000"})
        wait_for(lambda: all(scrape(metrics).get(key) == 1 for key in up.values()), 15, "redis up")
        assert scrape(metrics)[pending] == 0

        redis_server.stop()
        wait_for(lambda: all(scrape(metrics).get(key) == 0 for key in up.values()), 15, "redis down")
        # Mail goes on without Redis; the quota counters miss it: a repair is pending.
        with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as client:
            assert client.sendmail("bob@remote.test", [ALICE], MESSAGE) == {}
        assert scrape(metrics)[pending] == 1

        redis_server.start()
        wait_for(lambda: all(scrape(metrics).get(key) == 1 for key in up.values()), 15, "redis back")
        wait_for(lambda: scrape(metrics)[pending] == 0, 45, "the quota repair")  # the watch runs every 30 s
