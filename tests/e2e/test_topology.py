"""The deployed topology, one OS process per service, configured only through the manifests'
environment variables (tests/fixtures/topology.py): Redis, SeaweedFS, the mailstore, two imap,
smtp and pop3. Mail flows SMTP -> mailstore -> Redis -> the other imap's IDLE -> POP3 -> EXPUNGE;
then each backing part and service fails in turn and the clients see only retryable errors.

The tests share one topology and run in file order; each leaves every process running.
"""

from __future__ import annotations

import itertools
import poplib
import re
import smtplib
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from tests.fixtures.imap_server import RawImap
from tests.fixtures.topology import (
    CONFIG_ENV,
    LOCAL_OVERRIDES,
    TEST_TUNING,
    Topology,
    admin_channel,
    read_env_file,
    running_topology,
)

pytestmark = pytest.mark.slow

PASSWORD = "topology-Pass1"
PUSH_WAIT = 10.0  # imap-1 polls only every 30 s (the default): an update sooner came by push
OUTAGE = 4.0  # how long the mailstore stays down while the sessions keep trying
RECONNECT_WAIT = 3.0  # a frontend reaches a restarted mailstore again within this
POLL_INTERVAL = 1  # imap-2's poll interval: the fallback while Redis is down
_accounts = itertools.count(1)


# ---------------------------------------------------------------- the topology


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    folder = tmp_path_factory.mktemp("topology")
    # imap-1 keeps the default poll interval, imap-2 polls every second.
    with running_topology(folder, [{}, {"MAILSTACK_IMAP_POLL_INTERVAL": str(POLL_INTERVAL)}]) as topo:
        yield topo


_clients: list[Imap | poplib.POP3 | smtplib.SMTP] = []


@pytest.fixture
def topo(topology: Topology) -> Iterator[Topology]:
    topology.ensure_running()
    try:
        yield topology
    finally:  # every client a test opened, also when it failed halfway
        while _clients:
            _clients.pop().close()


def new_account(topo: Topology, quota_messages: int = 0) -> str:
    name = f"user{next(_accounts)}@example.test"
    request = pb.CreateAccountRequest(name=name, password=PASSWORD, quota_messages=quota_messages)
    with admin_channel(topo) as channel:
        pbg.AdminStub(channel).CreateAccount(request, timeout=10)
    return name


def message(subject: str, body: str = "hello from the topology test\r\n") -> bytes:
    return (
        f"From: Bob <bob@remote.test>\r\nTo: someone@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}"
    ).encode()


# ---------------------------------------------------------------- clients


class Imap(RawImap):
    def expect(self, pattern: bytes, timeout: float) -> bytes:
        """Read lines until one matches (bounded); the line."""
        deadline = time.monotonic() + timeout
        seen = []
        try:
            while True:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                line = self.line()
                seen.append(line)
                if re.search(pattern, line):
                    return line
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} within {timeout}s; got {seen!r}") from None
        finally:
            self.sock.settimeout(10.0)

    def ok(self, tag: str, text: str | bytes) -> list[bytes]:
        lines = self.command(tag, text)
        assert lines[-1].startswith(f"{tag} OK".encode()), lines
        return lines

    def idle(self) -> None:
        self.send(b"I IDLE\r\n")
        self.expect(rb"^\+ ", 10)

    def done(self) -> list[bytes]:
        self.send(b"DONE\r\n")
        return self.until("I")


def imap_login(topo: Topology, index: int, account: str, select: bool = True) -> Imap:
    client = Imap(topo.imaps[index].ports["imap"])
    _clients.append(client)
    client.login(account, PASSWORD)
    if select:
        client.ok("S", "SELECT INBOX")
    return client


def smtp_send(topo: Topology, account: str, data: bytes) -> tuple[int, bytes]:
    """One SMTP transaction to the inbound port: the first reply that is not a success, or the last."""
    with smtplib.SMTP("127.0.0.1", topo.smtp.ports["smtp"], timeout=15) as smtp:
        smtp.ehlo("client.remote.test")
        code, text = smtp.mail("bob@remote.test")
        if code != 250:
            return code, text
        code, text = smtp.rcpt(account)
        if code != 250:
            return code, text
        try:
            return smtp.data(data)
        except smtplib.SMTPDataError as e:
            error = e.smtp_error
            return e.smtp_code, error if isinstance(error, bytes) else error.encode()


def deliver(topo: Topology, account: str, data: bytes) -> None:
    code, text = smtp_send(topo, account, data)
    assert code == 250, (code, text)


def pop3_login(topo: Topology, account: str) -> poplib.POP3:
    pop = poplib.POP3("127.0.0.1", topo.pop3.ports["pop3"], timeout=15)
    _clients.append(pop)
    pop.user(account)
    pop.pass_(PASSWORD)
    return pop


def wait_subscribed(topo: Topology, account: str, within: float = 15.0) -> None:
    """Until both imap processes subscribe the account's Redis channel (PUBSUB NUMSUB), bounded."""
    channel = f"mailstack:events:{account}"
    client = redis.Redis.from_url(topo.redis.url, socket_timeout=2)
    try:
        deadline = time.monotonic() + within
        while (count := client.pubsub_numsub(channel)[0][1]) < len(topo.imaps) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
    assert count == len(topo.imaps), f"{count} subscribers of {channel}, want one per imap process"


def body_of(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def exists(client: Imap) -> int:
    lines = client.ok("N", "NOOP")
    counts = [int(m.group(1)) for line in lines if (m := re.match(rb"\* (\d+) EXISTS", line))]
    status = client.ok("T", "STATUS INBOX (MESSAGES)")
    match = re.search(rb"MESSAGES (\d+)", b" ".join(status))
    assert match, status
    assert not counts or counts[-1] == int(match.group(1)), (counts, status)
    return int(match.group(1))


def until_works(attempt: Callable[[], bytes | None], within: float) -> list[bytes]:
    """Repeat attempt (None: it worked; else the retryable error it met) until it works, bounded."""
    deadline = time.monotonic() + within
    failures = []
    while (error := attempt()) is not None:
        failures.append(error)
        assert time.monotonic() < deadline, f"{attempt.__name__} still failing after {within}s: {failures}"
        time.sleep(0.1)
    return failures


# ---------------------------------------------------------------- the mail flow


def test_smtp_push_to_other_imap_then_pop3_delete_shows_expunge(topo: Topology) -> None:
    with topo.diagnose():
        account = new_account(topo)
        watcher = imap_login(topo, 1, account)  # a session on imap-2 that is not IDLE
        idler = imap_login(topo, 0, account)  # IDLE on imap-1, which polls only every 30 s
        idler.idle()
        wait_subscribed(topo, account)  # each imap process follows the account on the bus once
        deliver(topo, account, message("flow one"))
        idler.expect(rb"^\* 1 EXISTS", PUSH_WAIT)
        assert idler.done()[-1].startswith(b"I OK")
        assert b"* 1 EXISTS" in watcher.ok("N", "NOOP")

        pop = pop3_login(topo, account)
        count, _ = pop.stat()
        assert count == 1
        _, lines, _ = pop.retr(1)
        assert b"Subject: flow one" in body_of(lines)
        assert pop.dele(1).startswith(b"+OK")
        idler.idle()
        assert pop.quit().startswith(b"+OK")  # RFC 1939 §6: deleted in the UPDATE state
        idler.expect(rb"^\* 1 EXPUNGE", PUSH_WAIT)
        idler.done()
        assert any(line == b"* 1 EXPUNGE" for line in watcher.ok("N", "NOOP"))


# ---------------------------------------------------------------- faults


def test_mailstore_restart_mid_session_gives_retryable_errors_only(topo: Topology) -> None:
    with topo.diagnose():
        account = new_account(topo)
        deliver(topo, account, message("before restart"))
        imap = imap_login(topo, 1, account)
        pop = pop3_login(topo, account)
        assert pop.stat()[0] == 1
        smtp = smtplib.SMTP("127.0.0.1", topo.smtp.ports["smtp"], timeout=15)
        _clients.append(smtp)
        smtp.ehlo("client.remote.test")

        def imap_fetch() -> bytes | None:
            lines = imap.command("F", "FETCH 1 BODY.PEEK[]")
            if lines[-1].startswith(b"F OK"):
                assert b"Subject: before restart" in b"\r\n".join(lines)
                return None
            assert lines[-1].startswith(b"F NO [UNAVAILABLE]"), lines
            return lines[-1]

        def pop3_retr() -> bytes | None:
            try:
                _, lines, _ = pop.retr(1)
            except poplib.error_proto as e:
                assert b"[SYS/TEMP]" in e.args[0], e
                return bytes(e.args[0])
            assert b"Subject: before restart" in body_of(lines)
            return None

        def smtp_deliver() -> bytes | None:
            assert smtp.mail("bob@remote.test")[0] == 250
            code, text = smtp.rcpt(account)
            if code == 451:
                smtp.rset()
                return text
            assert code == 250, (code, text)
            assert smtp.data(message("after restart"))[0] == 250
            return None

        attempts = (imap_fetch, pop3_retr, smtp_deliver)
        idler = imap_login(topo, 0, account)
        idler.idle()
        topo.mailstore.kill()
        deadline = time.monotonic() + OUTAGE
        while time.monotonic() < deadline:  # while it is down: retryable errors, sessions stay
            for attempt in attempts:
                assert attempt() is not None, f"{attempt.__name__} worked without a mailstore"
            time.sleep(0.5)
        topo.mailstore.start()  # same data, same port
        # The sessions go on as clients that retry would; each frontend reaches the mailstore again
        # within RECONNECT_WAIT of it serving, whatever the outage's length.
        for attempt in attempts:
            until_works(attempt, RECONNECT_WAIT)
        smtp.quit()
        pop.quit()
        idler.expect(rb"^\* 2 EXISTS", PUSH_WAIT)  # an IDLE across the restart still gets news
        assert idler.done()[-1].startswith(b"I OK")
        assert exists(imap) == 2


def test_redis_down_degrades_to_polling_and_push_recovers(topo: Topology) -> None:
    with topo.diagnose():
        account = new_account(topo)
        limited = new_account(topo, quota_messages=1)
        deliver(topo, account, message("before redis stops"))
        deliver(topo, limited, message("fills the quota"))
        poller = imap_login(topo, 1, account)
        poller.idle()

        topo.redis.stop()
        deliver(topo, account, message("while redis is down"))  # delivery continues
        code, text = smtp_send(topo, limited, message("over quota"))  # quotas still hold (from metadata)
        assert code == 452 and text.startswith(b"4.2.2"), (code, text)
        poller.expect(rb"^\* 2 EXISTS", POLL_INTERVAL + PUSH_WAIT)  # by polling
        assert poller.done()[-1].startswith(b"I OK")
        reader = imap_login(topo, 0, account)  # reading continues on both imap processes
        fetch = reader.ok("F", "FETCH 2 BODY.PEEK[]")
        assert b"while redis is down" in b"\r\n".join(fetch)
        draft = message("appended while redis is down")
        reader.ok("A", b"APPEND INBOX {%d+}\r\n" % len(draft) + draft)  # quota reserved from metadata
        pop = pop3_login(topo, account)
        assert pop.stat()[0] == 3
        pop.quit()

        topo.redis.start()  # same port, empty: the subscribers reconnect by themselves
        wait_subscribed(topo, account)  # the imap processes resubscribe by themselves
        reader.idle()  # imap-1 polls every 30 s: what arrives sooner is pushed
        deliver(topo, account, message("after redis is back"))
        reader.expect(rb"^\* 4 EXISTS", PUSH_WAIT)
        reader.done()


def test_s3_down_smtp_451_nothing_lost_and_retry_succeeds(topo: Topology) -> None:
    with topo.diagnose():
        account = new_account(topo)
        deliver(topo, account, message("before s3 stops"))
        imap = imap_login(topo, 1, account)

        topo.s3.stop(graceful=False)
        code, text = smtp_send(topo, account, message("while s3 is down"))
        assert code == 451 and text.startswith(b"4.3.0"), (code, text)
        assert exists(imap) == 1, "a failed delivery must leave nothing visible"

        topo.s3.start()  # same data and ports
        deadline = time.monotonic() + 30
        while True:  # the sender retries, as an MTA does
            code, text = smtp_send(topo, account, message("while s3 is down"))
            if code == 250 or time.monotonic() > deadline:
                break
            assert code == 451, (code, text)
            time.sleep(0.5)
        assert code == 250, (code, text)
        assert exists(imap) == 2
        fetch = b"\r\n".join(imap.ok("F", "FETCH 1:2 BODY.PEEK[]"))
        assert b"Subject: before s3 stops" in fetch and b"Subject: while s3 is down" in fetch


def test_sigterm_imap_says_bye_to_idle_clients(topo: Topology) -> None:
    with topo.diagnose():
        account = new_account(topo)
        idlers = [imap_login(topo, 1, account) for _ in range(2)]
        for client in idlers:
            client.idle()
        imap = topo.imaps[1]
        try:
            assert imap.proc is not None
            imap.proc.terminate()
            for client in idlers:
                client.expect(rb"^\* BYE ", 10)
                with pytest.raises(ConnectionError):
                    client.line()  # then the server closes the connection
            assert imap.proc.wait(20) == 0
            # The other replica still serves (what a rolling update relies on).
            other = imap_login(topo, 0, account)
            other.ok("L", "LOGOUT")
        finally:
            imap.restart()  # SIGTERM again is a no-op when it has exited


def test_topology_is_configured_like_the_manifests(topology: Topology) -> None:
    """Each process got config.env's values (but for loopback addresses, ports and paths) and
    otherwise only variables that the manifests set, or a named test tuning."""
    config = read_env_file(CONFIG_ENV)
    # base and the components the overlays pick from (the mailstore's backend is one of them)
    manifests = "\n".join(p.read_text() for p in CONFIG_ENV.parent.parent.rglob("*.yaml"))
    tuning = set(TEST_TUNING) | {"MAILSTACK_IMAP_POLL_INTERVAL"}
    for service in topology.services:
        for name, value in config.items():
            if name not in LOCAL_OVERRIDES | tuning:
                assert service.env[name] == value, f"{service.name}: {name}={service.env[name]!r}, not {value!r}"
        for name in service.env:
            if name.startswith(("MAILSTACK_", "OTEL_", "AWS_ACCESS", "AWS_SECRET")):
                assert name in config or name in tuning or f"name: {name}" in manifests, f"{service.name}: {name}"
