"""The POP3 session against a real in-process mailstore and Pop3Server over real sockets."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mailstack.services.common.config import Settings
from mailstack.services.common.read_ahead import ReadAheadBudget
from mailstack.services.common.tls import client_ssl_context
from mailstack.services.pop3.mailstore import _uid_set
from mailstack.services.pop3.server import Pop3Server
from mailstack.services.pop3.session import KNOWN_COMMANDS, STATE_COMMANDS, State, capabilities
from mailstack.v1 import mailstore_pb2 as pb
from prometheus_client import REGISTRY

from tests.fixtures.mailstore import Client, deliver, fetch_body, running_mailstore, settings_for
from tests.fixtures.pop3 import RawClient, port_of, running_pop3, unstuff
from tests.fixtures.ports import free_port

USER = "alice@example.test"
PASSWORD = "wonderland"
MESSAGES = [
    b"Subject: one\r\n\r\nfirst\r\n",
    b"Subject: two\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlatin-1 \xe9\xe8 and utf-8 \xc3\xa9\r\n",
    b"Subject: three\r\nX-Long: a\r\n b\r\n\r\nl1\r\nl2\r\nl3\r\nl4\r\n",
]


@dataclass
class Env:
    settings: Settings
    store: Client
    pop3: Pop3Server
    clients: list[RawClient] = field(default_factory=list)

    @property
    def port(self) -> int:
        return port_of(self.pop3, "POP3 (STLS)")

    async def connect(self) -> RawClient:
        client = await RawClient.connect(self.port)
        self.clients.append(client)  # closed at teardown
        return client

    async def login(self) -> RawClient:
        client = await self.connect()
        reply = await client.login(USER, PASSWORD)
        assert reply.startswith(b"+OK"), reply
        return client

    async def uids(self) -> list[int]:
        request = pb.FetchMetadataRequest(account=USER, mailbox="INBOX", fields=pb.MetadataFields(flags=True))
        return [m.uid async for batch in self.store.store.FetchMetadata(request) for m in batch.messages]


async def make_env(tmp_path: Path, **overrides: object) -> AsyncIterator[Env]:
    options: dict[str, object] = {"allow_plaintext_auth": True, "pop3_auth_failure_delay_ms": 0, "pop3_lease_ttl": 6}
    settings = settings_for(tmp_path, **{**options, **overrides})
    async with running_mailstore(settings) as (mailstore, client):
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=USER, password=PASSWORD))
        for data in MESSAGES:
            await deliver(client, [USER], data)
        async with running_pop3(settings.replace(mailstore_addr=mailstore.address)) as pop3:
            env = Env(settings, client, pop3)
            try:
                yield env
            finally:
                for raw in env.clients:
                    await raw.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for value in make_env(tmp_path):
        yield value


@pytest.fixture
async def strict_env(tmp_path: Path) -> AsyncIterator[Env]:
    async for value in make_env(tmp_path, allow_plaintext_auth=False):
        yield value


def test_state_table_is_data() -> None:
    assert STATE_COMMANDS[State.UPDATE] == frozenset()
    assert "RETR" in STATE_COMMANDS[State.TRANSACTION] and "RETR" not in STATE_COMMANDS[State.AUTHORIZATION]
    assert "STLS" in STATE_COMMANDS[State.AUTHORIZATION] and "STLS" not in STATE_COMMANDS[State.TRANSACTION]
    assert {"QUIT", "CAPA"} <= STATE_COMMANDS[State.AUTHORIZATION] & STATE_COMMANDS[State.TRANSACTION]
    assert "APOP" not in KNOWN_COMMANDS


def test_capabilities() -> None:
    plain = capabilities(tls=False, can_start_tls=True, plaintext_ok=False)
    assert "USER" not in plain and "SASL PLAIN" not in plain and "STLS" in plain
    assert {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"} <= set(plain)
    secure = capabilities(tls=True, can_start_tls=False, plaintext_ok=False)
    assert "USER" in secure and "SASL PLAIN" in secure and "STLS" not in secure


async def test_plaintext_auth_refused_before_stls(strict_env: Env) -> None:
    client = await strict_env.connect()
    status, caps = await client.multi("CAPA")
    assert status.startswith(b"+OK") and b"STLS\r\n" in caps and b"USER" not in caps and b"SASL" not in caps
    assert (await client.cmd("USER " + USER)).startswith(b"-ERR [AUTH]")
    assert (await client.cmd("PASS " + PASSWORD)).startswith(b"-ERR [AUTH]")
    assert (await client.cmd("AUTH PLAIN " + _plain(USER, PASSWORD))).startswith(b"-ERR [AUTH]")
    assert (await client.cmd("STAT")).startswith(b"-ERR")
    assert await client.cmd("QUIT") == b"+OK bye\r\n"
    await client.close()


async def test_stls_drops_a_command_pipelined_in_plaintext(strict_env: Env) -> None:
    """RFC 2595 §4 / RFC 7817: `STLS\r\nCAPA\r\n` in one packet: the CAPA sent in plaintext is
    never answered, neither before nor after the handshake (the STARTTLS command injection)."""
    client = await strict_env.connect()
    await client.send(b"STLS\r\nCAPA\r\n")
    assert (await client.line()).startswith(b"+OK")
    await client.writer.start_tls(
        client_ssl_context(strict_env.settings.effective_tls_cert), server_hostname="localhost"
    )
    # The first answer inside TLS is to our NOOP-like probe, not to the injected CAPA.
    assert (await client.cmd("STAT")).startswith(b"-ERR")
    status, caps = await client.multi("CAPA")
    assert status.startswith(b"+OK") and b"USER" in caps and b"STLS" not in caps
    with pytest.raises(TimeoutError):
        await client.line(wait=0.3)  # nothing else is pending


async def test_login_stat_list_uidl(env: Env) -> None:
    client = await env.login()
    sizes = [len(m) for m in MESSAGES]
    assert await client.cmd("STAT") == f"+OK 3 {sum(sizes)}\r\n".encode()
    _, listing = await client.multi("LIST")
    assert listing == b"".join(f"{i} {s}\r\n".encode() for i, s in enumerate(sizes, 1))
    assert await client.cmd("LIST 2") == f"+OK 2 {sizes[1]}\r\n".encode()
    assert (await client.cmd("LIST 4")).startswith(b"-ERR")
    assert (await client.cmd("LIST x")).startswith(b"-ERR")
    _, uidl = await client.multi("UIDL")
    values = [line.split()[1] for line in uidl.splitlines()]
    assert len(set(values)) == 3 and all(0 < len(v) <= 70 and set(v) <= set(range(0x21, 0x7F)) for v in values)
    assert await client.cmd("UIDL 3") == b"+OK 3 " + values[2] + b"\r\n"
    assert await client.cmd("NOOP") == b"+OK\r\n"
    assert (await client.cmd("QUIT")).startswith(b"+OK")
    # stable across sessions
    client = await env.login()
    assert (await client.multi("UIDL"))[1] == uidl
    await client.close()


async def test_uidl_of_an_imported_message_is_the_old_servers(env: Env) -> None:
    # Issue 16: a message moved in from Dovecot keeps the UIDL Dovecot announced, so a "leave mail
    # on server" client does not download it again; the others keep the default.
    async def imported() -> AsyncIterator[pb.AppendRequest]:
        header = pb.AppendHeader(account=USER, mailbox="INBOX", size=19, uid=1000, pop3_uidl="000003e86b16a51b")
        yield pb.AppendRequest(header=header)
        yield pb.AppendRequest(chunk=b"Subject: old\r\n\r\nx\r\n")

    await env.store.admin.ImportMessage(imported())
    client = await env.login()
    _, uidl = await client.multi("UIDL")
    lines = uidl.splitlines()
    assert len(lines) == 4 and lines[3] == b"4 000003e86b16a51b"
    assert len({line.split()[1] for line in lines}) == 4
    assert await client.cmd("UIDL 4") == b"+OK 4 000003e86b16a51b\r\n"
    await client.close()


async def test_dele_hides_but_keeps_numbering_and_rset_restores(env: Env) -> None:
    client = await env.login()
    assert (await client.cmd("DELE 2")).startswith(b"+OK")
    assert (await client.cmd("DELE 2")).startswith(b"-ERR")
    assert (await client.cmd("RETR 2")).startswith(b"-ERR")
    assert await client.cmd("STAT") == f"+OK 2 {len(MESSAGES[0]) + len(MESSAGES[2])}\r\n".encode()
    _, listing = await client.multi("LIST")
    assert [line.split()[0] for line in listing.splitlines()] == [b"1", b"3"]
    assert (await client.cmd("RSET")).startswith(b"+OK maildrop has 3 messages")
    assert (await client.cmd("LIST 2")).startswith(b"+OK 2 ")
    await client.close()


async def test_quit_applies_exactly_the_deletions(env: Env) -> None:
    before = await env.uids()
    # another client flags message 3 \Deleted: POP3 must not expunge it
    await env.store.store.StoreFlags(
        pb.StoreFlagsRequest(
            account=USER,
            mailbox="INBOX",
            uids=pb.UidSet(ranges=[pb.UidRange(first=before[2], last=before[2])]),
            mode=pb.STORE_ADD,
            flags=["\\Deleted"],
        )
    )
    client = await env.login()
    assert (await client.cmd("DELE 1")).startswith(b"+OK")
    assert (await client.cmd("DELE 2")).startswith(b"+OK")
    assert (await client.cmd("QUIT")).startswith(b"+OK")
    assert await env.uids() == [before[2]]


async def test_dropped_connection_deletes_nothing(env: Env) -> None:
    before = await env.uids()
    client = await env.login()
    assert (await client.cmd("DELE 1")).startswith(b"+OK")
    assert (await client.cmd("DELE 3")).startswith(b"+OK")
    await client.close()  # no QUIT: RFC 1939 §6, no UPDATE state
    # the lock is released at once, and nothing was deleted
    client = await env.login()
    assert await env.uids() == before
    assert (await client.cmd("STAT")).startswith(b"+OK 3 ")
    await client.close()


async def test_second_login_gets_in_use(env: Env) -> None:
    first = await env.login()
    second = await env.connect()
    assert (await second.login(USER, PASSWORD)).startswith(b"-ERR [IN-USE]")
    assert (await second.cmd("STAT")).startswith(b"-ERR")  # still in AUTHORIZATION
    assert (await first.cmd("QUIT")).startswith(b"+OK")
    assert (await second.login(USER, PASSWORD)).startswith(b"+OK")
    await second.close()


async def test_retr_is_byte_exact(env: Env) -> None:
    client = await env.login()
    uids = await env.uids()
    for number, uid in enumerate(uids, 1):
        status, body = await client.multi(f"RETR {number}")
        stored = await fetch_body(env.store, USER, "INBOX", uid)
        assert status == f"+OK {len(stored)} octets\r\n".encode()
        assert unstuff(body) == stored == MESSAGES[number - 1]
    await client.close()


async def test_top(env: Env) -> None:
    client = await env.login()
    assert (await client.multi("TOP 3 0"))[1] == b"Subject: three\r\nX-Long: a\r\n b\r\n\r\n"
    assert (await client.multi("TOP 3 2"))[1] == b"Subject: three\r\nX-Long: a\r\n b\r\n\r\nl1\r\nl2\r\n"
    # fetchmail's "TOP n 99999999" is the whole message
    assert unstuff((await client.multi("TOP 2 99999999"))[1]) == MESSAGES[1]
    assert (await client.multi("TOP 2 1"))[1] == b"Subject: two\r\n\r\n..leading dot\r\n"
    assert (await client.cmd("TOP 1")).startswith(b"-ERR")
    assert (await client.cmd("TOP 1 -1")).startswith(b"-ERR")
    assert (await client.cmd("TOP 9 1")).startswith(b"-ERR")
    assert await client.cmd("NOOP") == b"+OK\r\n"
    await client.close()


async def test_large_message_streams(env: Env) -> None:
    line = b"0123456789" * 7 + b"\r\n"
    data = b"Subject: big\r\n\r\n" + b"".join(b"." + line if i % 3 == 0 else line for i in range(40_000))
    await deliver(env.store, [USER], data)  # ~2.9 MB, several gRPC chunks
    client = await env.login()
    status, body = await client.multi("RETR 4")
    assert status == f"+OK {len(data)} octets\r\n".encode()
    assert unstuff(body) == data
    await client.close()


async def test_read_ahead_serves_every_order_byte_exact(env: Env) -> None:
    # RETR reads the next small messages ahead; a large one in the middle streams on its own.
    big = b"Subject: big\r\n\r\n" + b".dot line of some length to fill the message\r\n" * 30_000
    extra = [b"Subject: four\r\n\r\n.4\r\n", big, b"Subject: six\r\n\r\n6\r\n"]
    for data in extra:
        await deliver(env.store, [USER], data)
    everything = MESSAGES + extra
    client = await env.login()
    assert (await client.cmd("DELE 2")).startswith(b"+OK")
    for number in [1, 3, 4, 5, 6, 3, 1]:
        status, body = await client.multi(f"RETR {number}")
        assert status == f"+OK {len(everything[number - 1])} octets\r\n".encode()
        assert unstuff(body) == everything[number - 1], number
    assert (await client.cmd("RETR 2")).startswith(b"-ERR")
    await client.close()


def read_ahead_held() -> float:
    return REGISTRY.get_sample_value("mailstack_pop3_read_ahead_bytes") or 0.0


@pytest.mark.parametrize("budget", [0, 60, 64 * 1024 * 1024])
async def test_read_ahead_stays_within_the_process_budget(tmp_path: Path, budget: int) -> None:
    # 0: every RETR streams alone; 60 bytes: room for message 1 (23 bytes) but not also message 2
    async for env in make_env(tmp_path, pop3_read_ahead_bytes=budget):
        client = await env.login()
        for number in (1, 2, 3, 1):
            status, body = await client.multi(f"RETR {number}")
            assert status.startswith(b"+OK") and unstuff(body) == MESSAGES[number - 1], number
            assert read_ahead_held() <= budget
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
        assert read_ahead_held() == 0  # everything fetched ahead was given back


async def test_sessions_share_the_budget_and_a_dropped_one_gives_its_share_back(tmp_path: Path) -> None:
    # Room for one session's read-ahead (~170 bytes of MESSAGES), not two: the second streams, and
    # a client that disconnects mid-maildrop (no QUIT) releases what it held.
    async for env in make_env(tmp_path, pop3_read_ahead_bytes=200):
        bob = "bob@example.test"
        await env.store.admin.CreateAccount(pb.CreateAccountRequest(name=bob, password=PASSWORD))
        for data in MESSAGES:
            await deliver(env.store, [bob], data)
        alice = await env.login()
        other = await env.connect()
        assert (await other.login(bob, PASSWORD)).startswith(b"+OK")
        status, body = await alice.multi("RETR 1")  # alice takes the budget for 1..3
        assert unstuff(body) == MESSAGES[0] and read_ahead_held() > 0
        for number in (1, 2, 3):  # bob gets what is left, or nothing, and streams: same bytes
            status, body = await other.multi(f"RETR {number}")
            assert status.startswith(b"+OK") and unstuff(body) == MESSAGES[number - 1]
            assert read_ahead_held() <= 200
        await alice.close()  # dropped without QUIT
        await other.close()
        for _ in range(50):
            if read_ahead_held() == 0:
                break
            await asyncio.sleep(0.02)
        assert read_ahead_held() == 0


def test_uid_sets_name_exactly_the_uids() -> None:
    # QUIT expunges exactly the UIDs marked: consecutive ones may share a range, no others may slip in
    def ranges(uids: list[int]) -> list[tuple[int, int]]:
        return [(r.first, r.last) for r in _uid_set(uids).ranges]

    assert ranges([]) == [] and ranges([5]) == [(5, 5)] and ranges([3, 1, 2]) == [(1, 3)]
    assert ranges([1, 2, 4, 5, 7, 7]) == [(1, 2), (4, 5), (7, 7)]


def test_read_ahead_budget_grants_what_is_left() -> None:
    budget = ReadAheadBudget(100)
    assert budget.take(60) == 60 and budget.take(60) == 40 and budget.take(1) == 0
    budget.give_back(50)
    assert budget.take(80) == 50 and budget.held == 100
    budget.give_back(1000)
    assert budget.held == 0 and ReadAheadBudget(-5).take(1) == 0


async def test_unknown_and_misplaced_commands_keep_the_session(env: Env) -> None:
    client = await env.connect()
    assert (await client.cmd("XYZZY")).startswith(b"-ERR")
    assert (await client.cmd("RETR 1")).startswith(b"-ERR")
    assert (await client.cmd("PASS x")).startswith(b"-ERR")  # no USER yet
    assert (await client.cmd("X" * 5000)).startswith(b"-ERR")
    assert (await client.login(USER, PASSWORD)).startswith(b"+OK")
    assert (await client.cmd("STLS")).startswith(b"-ERR")  # not in TRANSACTION
    assert (await client.cmd("USER bob")).startswith(b"-ERR")
    assert (await client.cmd("STAT")).startswith(b"+OK 3 ")
    await client.close()


async def test_pipelined_commands_answered_in_order(env: Env) -> None:
    client = await env.connect()
    await client.send(
        f"CAPA\r\nUSER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST 1\r\nRETR 1\r\nBOGUS\r\nUIDL 1\r\nQUIT\r\n".encode()
    )
    assert (await client.line()).startswith(b"+OK")
    assert b"PIPELINING\r\n" in await client.body()
    assert (await client.line()).startswith(b"+OK")
    assert (await client.line()).startswith(b"+OK maildrop has 3")
    assert (await client.line()).startswith(b"+OK 3 ")
    assert (await client.line()) == f"+OK 1 {len(MESSAGES[0])}\r\n".encode()
    assert (await client.line()).startswith(b"+OK")
    assert await client.body() == MESSAGES[0]
    assert (await client.line()).startswith(b"-ERR")
    assert (await client.line()).startswith(b"+OK 1 ")
    assert (await client.line()).startswith(b"+OK")
    assert await client.line() == b""  # closed after QUIT


def _plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


async def test_auth_plain_with_and_without_initial_response(env: Env) -> None:
    client = await env.connect()
    assert (await client.cmd("AUTH PLAIN " + _plain(USER, PASSWORD))).startswith(b"+OK")
    await client.cmd("QUIT")
    client = await env.connect()
    assert await client.cmd("AUTH PLAIN") == b"+ \r\n"
    assert (await client.cmd(_plain(USER, PASSWORD, USER))).startswith(b"+OK")
    await client.cmd("QUIT")
    client = await env.connect()
    assert await client.cmd("AUTH PLAIN") == b"+ \r\n"
    assert (await client.cmd("*")).startswith(b"-ERR")  # cancelled
    assert (await client.cmd("AUTH PLAIN !!notbase64")).startswith(b"-ERR")
    assert (await client.cmd("AUTH CRAM-MD5")).startswith(b"-ERR")
    assert (await client.cmd("AUTH PLAIN " + _plain(USER, PASSWORD))).startswith(b"+OK")
    await client.close()


async def test_auth_failures_limited(env: Env) -> None:
    client = await env.connect()
    assert (await client.login(USER, "wrong")).startswith(b"-ERR [AUTH]")
    assert (await client.cmd("AUTH PLAIN " + _plain(USER, "wrong"))).startswith(b"-ERR [AUTH]")
    assert (await client.login("nobody@example.test", "x")).startswith(b"-ERR [AUTH]")
    assert await client.line() == b""  # third failure (the limit): closed


async def test_autologout(tmp_path: Path) -> None:
    async for env in make_env(tmp_path, pop3_idle_timeout=1):
        before = await env.uids()
        client = await env.login()
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        assert (await client.line(wait=10)).startswith(b"-ERR")
        assert await client.line() == b""
        assert await env.uids() == before


async def test_activity_moves_the_autologout_deadline(tmp_path: Path) -> None:
    # one watchdog timer per connection: it must re-arm for the moved deadline, not fire at the first one
    async for env in make_env(tmp_path, pop3_idle_timeout=1):
        client = await env.login()
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 2.5:
            assert (await client.cmd("NOOP")) == b"+OK\r\n"
            last = loop.time()
            await asyncio.sleep(0.3)
        assert (await client.line(wait=10)).startswith(b"-ERR")
        assert 0.9 < loop.time() - last < 2.5


async def test_shutdown_deletes_nothing(env: Env) -> None:
    before = await env.uids()
    client = await env.login()
    assert (await client.cmd("DELE 1")).startswith(b"+OK")
    await env.pop3.stop(1.0)
    assert (await client.line()).startswith(b"-ERR [SYS/TEMP]")
    assert await env.uids() == before


async def test_message_expunged_elsewhere(env: Env) -> None:
    client = await env.login()
    uids = await env.uids()
    await env.store.store.StoreFlags(
        pb.StoreFlagsRequest(
            account=USER,
            mailbox="INBOX",
            uids=pb.UidSet(ranges=[pb.UidRange(first=uids[0], last=uids[0])]),
            mode=pb.STORE_ADD,
            flags=["\\Deleted"],
        )
    )
    await env.store.store.Expunge(pb.ExpungeRequest(account=USER, mailbox="INBOX", all_deleted=True))
    assert (await client.cmd("RETR 1")).startswith(b"-ERR")
    assert (await client.multi("RETR 2"))[0].startswith(b"+OK")
    assert (await client.cmd("DELE 1")).startswith(b"+OK")
    assert (await client.cmd("QUIT")).startswith(b"+OK")
    assert await env.uids() == uids[1:]


async def test_mailstore_unreachable_is_sys_temp(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, allow_plaintext_auth=True, mailstore_addr=f"127.0.0.1:{free_port()}")
    async with running_pop3(settings) as pop3:
        client = await RawClient.connect(port_of(pop3, "POP3 (STLS)"))
        assert (await client.login(USER, PASSWORD)).startswith(b"-ERR [SYS/TEMP]"), "mailstore down"
        assert (await client.cmd("NOOP")).startswith(b"-ERR")  # still connected, still AUTHORIZATION
        await client.close()


async def test_lease_is_renewed_while_the_session_lives(tmp_path: Path) -> None:
    async for env in make_env(tmp_path, pop3_lease_ttl=2):
        client = await env.login()
        await asyncio.sleep(3)  # longer than the ttl: only renewal keeps the lock
        granted = await env.store.store.AcquireLease(pb.LeaseRequest(name=f"pop3:{USER}", holder="x", ttl_seconds=5))
        assert not granted.granted
        await client.cmd("QUIT")
        granted = await env.store.store.AcquireLease(pb.LeaseRequest(name=f"pop3:{USER}", holder="x", ttl_seconds=5))
        assert granted.granted
