"""Three mailstore replicas on one PostgreSQL, with SeaweedFS and Valkey, each service its own process
(issue 20, ADR 0035; tests/fixtures/replicas.py).

- A change made through replica A reaches an IDLE session whose imap frontend calls only replica B
  (Redis events; the session catches up by MODSEQ), well within the push target.
- Under load (20 SMTP senders, 10 IMAP sessions, half of them in IDLE), the replica leading the
  background jobs is killed with SIGKILL and restarted, then the next leader is stopped gracefully and
  restarted. Afterwards: every message answered 250 is stored (duplicates counted and reported), no
  UID names two messages, every session's view only grew (UIDs new to it above all it had seen, EXISTS
  never back, UIDVALIDITY stable), and no two replicas ran a background job at the same time.
"""

from __future__ import annotations

import itertools
import random
import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from tests.fixtures.postgres_server import PostgresServer, fresh_database
from tests.fixtures.replicas import Replicated, replicated_topology
from tests.fixtures.topology import ServiceProcess, admin_channel

pytestmark = pytest.mark.slow

PASSWORD = "replicas-Pass1"
PUSH_TARGET = 5.0  # imap polls every 30 s by default: an update within this came by push
SWEEP_SECONDS = 1  # a one-second orphan-sweep round: its lease (2 rounds) moves on within seconds
SENDERS, SESSIONS, ACCOUNTS = 20, 10, 10
SEND_SECONDS = 30.0  # the load runs this long (bounded: at most MAX_PER_SENDER messages each)
MAX_PER_SENDER = 120
CATCH_UP = 30.0  # after the load, every session sees every acknowledged message within this


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Iterator[Replicated]:
    folder = tmp_path_factory.mktemp("replicas")
    with (
        fresh_database(postgres_server) as url,
        replicated_topology(
            folder,
            url,
            replicas=3,
            imap_env=[{}, {}, {}],
            pinned={1: 0, 2: 1},  # imap-2 calls only replica 0, imap-3 only replica 1
            mailstore_env={"MAILSTACK_ORPHAN_SWEEP_SECONDS": str(SWEEP_SECONDS)},
        ) as topo,
    ):
        yield topo


@pytest.fixture
def topo(replicated: Replicated) -> Replicated:
    replicated.ensure_running()
    return replicated


@contextmanager
def diagnose(topo: Replicated) -> Iterator[None]:
    """A failure inside gets every process's log tail appended."""
    try:
        yield
    except Exception as e:
        raise AssertionError(f"{type(e).__name__}: {e}\n\n{topo.log_tails()}") from e


_accounts = itertools.count(1)


def new_accounts(topo: Replicated, count: int) -> list[str]:
    names = [f"r{next(_accounts)}@example.com" for _ in range(count)]
    with admin_channel(topo.topology) as channel:
        admin = pbg.AdminStub(channel)
        for name in names:
            admin.CreateAccount(pb.CreateAccountRequest(name=name, password=PASSWORD), timeout=10)
    return names


def mail(token: str, to: str) -> str:
    header = f"From: load@remote.test\r\nTo: {to}\r\nSubject: {token}\r\nMessage-ID: <{token}@remote.test>\r\n"
    return f"{header}\r\n{token}\r\n"


def imap(port: int) -> IMAPClient:
    return IMAPClient("127.0.0.1", port=port, ssl=False, timeout=15)


def until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# ---------------------------------------------------------------- events across replicas


def test_a_change_through_replica_a_reaches_an_idle_session_on_replica_b(topo: Replicated) -> None:
    with diagnose(topo):
        change_reaches_idle_session(topo)


def change_reaches_idle_session(topo: Replicated) -> None:
    (account,) = new_accounts(topo, 1)
    via_a, via_b = topo.topology.imaps[1], topo.topology.imaps[2]  # pinned to replica 0 / replica 1
    with imap(via_a.ports["imap"]) as writer, imap(via_b.ports["imap"]) as watcher:
        writer.login(account, PASSWORD)
        watcher.login(account, PASSWORD)
        watcher.enable("CONDSTORE")
        start = watcher.select_folder("INBOX")
        watcher.idle()
        try:
            began = time.monotonic()
            writer.append("INBOX", mail("through-a", account))
            exists = watcher.idle_check(timeout=PUSH_TARGET)
            assert (1, b"EXISTS") in exists, exists
            pushed_new = time.monotonic() - began
            writer.select_folder("INBOX")
            writer.add_flags([1], [b"\\Flagged"])
            deadline = time.monotonic() + PUSH_TARGET
            updates: list[Any] = []  # imapclient: (n, b"FETCH", (b"FLAGS", (...), ...))
            while time.monotonic() < deadline and not any(b"FETCH" in u for u in updates):
                updates += watcher.idle_check(timeout=0.5)
        finally:
            watcher.idle_done()
        fetches = [u for u in updates if b"FETCH" in u]
        assert fetches and b"\\Flagged" in fetches[0][2][fetches[0][2].index(b"FLAGS") + 1], updates
        # Catch-up by MODSEQ: what the push announced is what the change log holds.
        changed = watcher.fetch([1], ["FLAGS"], modifiers=[f"CHANGEDSINCE {start[b'HIGHESTMODSEQ']}"])
        assert list(changed) == [1] and b"\\Flagged" in changed[1][b"FLAGS"]
        assert pushed_new < PUSH_TARGET


# ---------------------------------------------------------------- load while replicas fail


@dataclass
class SessionRecord:
    account: str
    idle: bool
    uids: dict[int, str] = field(default_factory=dict)  # UID -> the Subject token it showed
    violations: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    looks: int = 0
    uidvalidity: int = 0


class Session(threading.Thread):
    """One IMAP client on one INBOX until told to stop; checks its own view at every look and comes
    back (new connection, same checks) when the server refuses or drops it."""

    def __init__(self, port: int, record: SessionRecord, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.record, self.stop_event = port, record, stop
        self.exists = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with imap(self.port) as client:
                    client.login(self.record.account, PASSWORD)
                    self.selected(client.select_folder("INBOX"))
                    while not self.stop_event.is_set():
                        self.look(client)
                        self.wait(client)
            except (TimeoutError, IMAPClientError, OSError) as e:
                self.record.errors[f"{type(e).__name__}: {str(e)[:120]}"] += 1
                time.sleep(0.3)

    def selected(self, answer: dict[bytes, object]) -> None:
        uidvalidity = int(str(answer[b"UIDVALIDITY"]))
        if self.record.uidvalidity and uidvalidity != self.record.uidvalidity:
            self.record.violations.append(f"UIDVALIDITY {self.record.uidvalidity} -> {uidvalidity}")
        self.record.uidvalidity = uidvalidity
        self.saw_exists(int(str(answer[b"EXISTS"])))

    def saw_exists(self, count: int) -> None:
        # Nothing is expunged in this test: a mailbox never shrinks, in a session or across them.
        if count < self.exists:
            self.record.violations.append(f"EXISTS went back from {self.exists} to {count}")
        self.exists = max(self.exists, count)

    def look(self, client: IMAPClient) -> None:
        uids = set(client.search("ALL"))
        known = set(self.record.uids)
        if known - uids:
            self.record.violations.append(f"UIDs vanished: {sorted(known - uids)[:5]}")
        new = sorted(uids - known)
        if new and known and new[0] < max(known):
            self.record.violations.append(f"UID {new[0]} appeared after {max(known)} was seen")
        if new:
            for uid, data in client.fetch(new, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).items():
                header = data[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode()
                self.record.uids[uid] = header.split(":", 1)[1].strip()
        self.record.looks += 1

    def wait(self, client: IMAPClient) -> None:
        if not self.record.idle:
            for response in client.noop()[1]:
                if isinstance(response, tuple) and response[1] == b"EXISTS":
                    self.saw_exists(response[0])
            time.sleep(0.5)
            return
        client.idle()
        try:
            responses = list(client.idle_check(timeout=1.5))
        finally:
            ended = client.idle_done()  # (an error in either: the session starts again, counted)
        responses += ended[1]
        for response in responses:
            if isinstance(response, tuple) and len(response) > 1 and response[1] == b"EXISTS":
                self.saw_exists(response[0])


class Sender(threading.Thread):
    """One SMTP client sending one message after another (each with its own token), reconnecting when
    the server drops it; records what was answered 250 and what was refused."""

    def __init__(self, index: int, port: int, accounts: list[str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.index, self.port, self.accounts, self.stop_event = index, port, accounts, stop
        self.accepted: list[tuple[str, str]] = []  # (recipient, token)
        self.refused: Counter[str] = Counter()
        self.sent = 0

    def run(self) -> None:
        rng = random.Random(self.index)
        while not self.stop_event.is_set() and self.sent < MAX_PER_SENDER:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
                    while not self.stop_event.is_set() and self.sent < MAX_PER_SENDER:
                        token = f"s{self.index}-m{self.sent}"
                        self.sent += 1
                        recipient = rng.choice(self.accounts)
                        try:
                            smtp.sendmail("load@remote.test", [recipient], mail(token, recipient))
                            self.accepted.append((recipient, token))
                        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as e:
                            self.refused[type(e).__name__] += 1
                        time.sleep(0.05)
            except (smtplib.SMTPException, OSError) as e:
                self.refused[type(e).__name__] += 1
                time.sleep(0.2)


def current_leader(topo: Replicated, job: str, after: float) -> ServiceProcess:
    """The running replica that ran the latest round of `job` started after `after`."""
    holder = ""

    def found() -> bool:
        nonlocal holder
        rounds = [r for r in topo.job_rounds() if r.job == job and r.start > after]
        holder = rounds[-1].holder if rounds else ""
        return bool(holder)

    until(found, 15, f"a round of {job}")
    return topo.replica_of(holder)


def stored_tokens(topo: Replicated, accounts: list[str]) -> dict[str, dict[int, str]]:
    """account -> UID -> Subject token, read afresh through the frontend over every replica."""
    out = {}
    for account in accounts:
        with imap(topo.topology.imaps[0].ports["imap"]) as client:
            client.login(account, PASSWORD)
            client.select_folder("INBOX", readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]) if uids else {}
            out[account] = {
                uid: data[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().split(":", 1)[1].strip()
                for uid, data in fetched.items()
            }
    return out


def restart(service: ServiceProcess) -> None:
    """Start a stopped replica again on its port. While it was down, that port (from the ephemeral
    range, as free_port picks them) may have been the source port of some outgoing connection for a
    moment: bind fails, and the next attempt gets it. Any other failure is the test's failure."""
    for attempt in range(3):
        try:
            service.start()
            return
        except RuntimeError as e:
            if attempt == 2 or not re.search(r"bind|cannot listen|in use", str(e), re.IGNORECASE):
                raise
            time.sleep(1)


def fail_replicas(topo: Replicated, began: float) -> None:
    """The leader of the orphan sweep dies without a word (SIGKILL) and comes back; then the replica
    that took the job over stops gracefully (it hands its leases over at once) and comes back."""
    time.sleep(4)
    killed = current_leader(topo, "orphan-sweep", began)
    killed.kill()
    killed_at = time.time()
    time.sleep(4)
    restart(killed)
    stopped = current_leader(topo, "orphan-sweep", killed_at)
    stopped.stop()
    time.sleep(4)
    restart(stopped)


def check_stored(expected: dict[str, set[str]], stored: dict[str, dict[int, str]]) -> int:
    """Every acknowledged message is stored; returns how many extra copies there are (reported)."""
    duplicates = 0
    for account, tokens in expected.items():
        copies = Counter(stored[account].values())
        missing = tokens - set(copies)
        assert not missing, f"{account}: answered 250 but not stored: {sorted(missing)[:10]}"
        duplicates += sum(count - 1 for count in copies.values())
    return duplicates


def check_sessions(
    records: list[SessionRecord], stored: dict[str, dict[int, str]], expected: dict[str, set[str]]
) -> None:
    for record in records:
        unseen = expected[record.account] - set(record.uids.values())
        assert not unseen, f"{record} never saw {len(unseen)} acknowledged messages, e.g. {sorted(unseen)[:5]}"
        assert not record.violations, f"{record.account} (idle={record.idle}): {record.violations[:5]}"
        assert record.looks > 5
        for uid, token in record.uids.items():  # one UID, one message, for every client
            assert stored[record.account].get(uid) == token, f"{record.account} UID {uid}: {token}"


def check_jobs(topo: Replicated, began: float) -> None:
    """One replica at a time for every job, and the sweep taken over after the kill and the stop."""
    rounds = topo.job_rounds()
    sweeps = {r.holder for r in rounds if r.job == "orphan-sweep" and r.start >= began}
    assert len(sweeps) >= 3, sweeps
    for job in {r.job for r in rounds}:
        ordered = [r for r in rounds if r.job == job]
        for earlier, later in itertools.pairwise(ordered):
            assert later.start >= earlier.end, f"{job} ran on {earlier.holder} and {later.holder} at once"


def test_load_while_one_replica_is_killed_and_another_stopped(topo: Replicated) -> None:
    with diagnose(topo):
        load_while_replicas_fail(topo)


def load_while_replicas_fail(topo: Replicated) -> None:
    accounts = new_accounts(topo, ACCOUNTS)
    stop_sending, stop_sessions = threading.Event(), threading.Event()
    records = [SessionRecord(accounts[i % ACCOUNTS], idle=i % 2 == 0) for i in range(SESSIONS)]
    sessions = [Session(topo.topology.imaps[0].ports["imap"], record, stop_sessions) for record in records]
    senders = [Sender(i, topo.topology.smtp.ports["smtp"], accounts, stop_sending) for i in range(SENDERS)]
    began = time.time()
    for thread in [*sessions, *senders]:
        thread.start()
    try:
        fail_replicas(topo, began)
        until(lambda: time.time() - began > SEND_SECONDS or not any(s.is_alive() for s in senders), SEND_SECONDS + 30,
              "the load's end")  # fmt: skip
    finally:
        stop_sending.set()
        for sender in senders:
            sender.join(60)
    expected: dict[str, set[str]] = {a: set() for a in accounts}
    for recipient, token in (pair for sender in senders for pair in sender.accepted):
        expected[recipient].add(token)
    deadline = time.monotonic() + CATCH_UP
    try:
        while time.monotonic() < deadline and not all(expected[r.account] <= set(r.uids.values()) for r in records):
            time.sleep(0.2)
    finally:
        stop_sessions.set()
        for session in sessions:
            session.join(30)

    stored = stored_tokens(topo, accounts)
    duplicates = check_stored(expected, stored)
    accepted = sum(len(tokens) for tokens in expected.values())
    refused = dict(sum((s.refused for s in senders), Counter()))
    print(
        f"\nreplicas under faults: {accepted} messages answered 250, refused {refused}, "
        f"{duplicates} extra copies stored, session errors {dict(sum((r.errors for r in records), Counter()))}, "
        f"looks {sum(r.looks for r in records)}"
    )
    assert accepted > 100, "the load never got going"
    check_sessions(records, stored, expected)
    check_jobs(topo, began)
