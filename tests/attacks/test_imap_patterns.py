"""Attack: one IMAP command that freezes the server (issue 13 §4).

`LIST "" "***...*x"` used to become a backtracking regular expression run on the event loop: the
process sat at 100 % CPU, every other client waited, SIGTERM went unanswered. Each attack here is
sent on one connection while a second, already logged-in connection sends NOOP: the NOOP must be
answered within a second or two and the attack within a few seconds (linear-time matching), and
patterns longer than MAX_PATTERN_BYTES are refused with a tagged BAD. SEARCH gets the same
treatment (huge strings, deep nesting, too many keys).

Against the in-process server (tests/fixtures/imap_server.py) and against the deployed topology
(one OS process per service, tests/fixtures/topology.py; slow).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailstack.message.mailbox_patterns import (
    MAX_PATTERN_BYTES,
    MAX_PATTERNS_BYTES,
    MailboxPatterns,
    PatternTooLongError,
    matches,
)
from mailstack.services.common import metrics
from mailstack.services.common.grpc_client import open_sync_channel
from mailstack.services.common.lifecycle import run_services
from mailstack.services.imap.commands.search import MAX_WIRE_DEPTH
from mailstack.services.imap.protocol.search import MAX_DEPTH, MAX_KEYS
from mailstack.storage.private_paths import private_dir
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from tests.fixtures.imap_server import PASSWORD, ImapEnv, RawImap, imap_env, message
from tests.fixtures.mailstore import append, open_client, settings_for
from tests.fixtures.topology import (
    Topology,
    admin_channel,
    identity_of,
    running_topology,
)

T = TypeVar("T")
ANSWER_WITHIN = 5.0  # seconds for the hostile command's tagged answer
NOOP_WITHIN = 2.0  # seconds for another client's NOOP while the hostile command runs
MAILBOXES = 300  # existing (and subscribed) mailboxes the patterns are matched against

# The patterns of the attack, each within the length bound so that it is really matched.
FLOODS = {
    "stars": "*" * 900 + "x",
    "percents": "%" * 900 + "x",
    "mixed": "*%" * 450 + "x",
    "star-literal": "*a" * 450 + "x",
    "percent-literal": "%a/" * 300 + "x",
}


def _account_with_mailboxes(env: ImapEnv) -> str:
    user = env.new_account()

    async def create() -> None:
        for i in range(MAILBOXES):
            # names with many "a", "/" and no final "x": the worst case for a backtracking matcher
            name = f"aaaa{i}/aaaa/aaaa/aaaaaaaaaaaaaaaaaaaa" if i % 2 else f"a{i}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            await env.client.store.CreateMailbox(pb.CreateMailboxRequest(account=user, name=name))
            await env.client.store.Subscribe(pb.SubscribeRequest(account=user, name=name, subscribed=True))

    env.run(create, timeout=120)
    return user


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("attack-patterns")) as e:
        yield e


@pytest.fixture(scope="module")
def user(env: ImapEnv) -> str:
    return _account_with_mailboxes(env)


def _connect(port: int, user: str, timeout: float = ANSWER_WITHIN) -> RawImap:
    client = RawImap(port, timeout=timeout)
    client.login(user)
    return client


def attack_while_noop(port: int, user: str, command: bytes, select: str | None = None) -> list[bytes]:
    """Send `command` on one connection; while it runs, NOOP on another must be answered promptly.

    Returns the hostile command's response lines (its tagged answer last)."""
    attacker = _connect(port, user)
    bystander = _connect(port, user, timeout=NOOP_WITHIN + 1)
    try:
        if select is not None:
            assert attacker.command("S", f"SELECT {select}")[-1].startswith(b"S OK")
        started = time.monotonic()
        attacker.send(b"A " + command + b"\r\n")
        noop_seconds = _timed(lambda: bystander.command("N", "NOOP"))
        try:
            lines = attacker.until("A")
        except TimeoutError:
            pytest.fail(f"no answer to {command[:60]!r}... within {ANSWER_WITHIN} s")
        elapsed = time.monotonic() - started
        assert noop_seconds < NOOP_WITHIN, f"another client waited {noop_seconds:.1f} s for NOOP"
        assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.1f} s"
        return lines
    finally:
        attacker.close()
        bystander.close()


def _timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    try:
        call()
    except TimeoutError:
        return float("inf")
    return time.monotonic() - started


# ---------------------------------------------------------------- LIST, LSUB, LIST-EXTENDED


@pytest.mark.parametrize("pattern", FLOODS.values(), ids=FLOODS.keys())
def test_list_wildcard_flood_is_answered_quickly(env: ImapEnv, user: str, pattern: str) -> None:
    lines = attack_while_noop(env.port(), user, f'LIST "" "{pattern}"'.encode())
    assert lines[-1].startswith(b"A OK") and len(lines) == 1  # nothing ends in "x"


def test_list_wildcard_flood_at_the_length_bound_matches_what_it_should(env: ImapEnv, user: str) -> None:
    # 999 stars and a final "a": each created mailbox ends in "a" and is listed once (their
    # \NonExistent parents are not: "*" lists the children themselves, RFC 5258 §3)
    lines = attack_while_noop(env.port(), user, f'LIST "" "{"*" * (MAX_PATTERN_BYTES - 1)}a"'.encode())
    assert lines[-1].startswith(b"A OK") and len(lines) - 1 == len(set(lines)) - 1 == MAILBOXES


@pytest.mark.parametrize(
    "command",
    [
        f'LIST "" "{"*" * (MAX_PATTERN_BYTES + 1)}"',
        f'LIST "{"a" * 600}" "{"%" * 401}"',  # reference + pattern is what is matched
        f'LSUB "" "{"*" * (MAX_PATTERN_BYTES + 1)}"',
        'LIST () "" (' + " ".join(f'"{"*" * 999}{i}"' for i in range(5)) + ")",  # 5,000 bytes together
        f'LIST "" {{{MAX_PATTERN_BYTES + 1}+}}\r\n{"*" * (MAX_PATTERN_BYTES + 1)}',  # as a literal
    ],
    ids=["list", "reference", "lsub", "extended-total", "literal"],
)
def test_too_long_patterns_are_refused_with_bad(env: ImapEnv, user: str, command: str) -> None:
    lines = attack_while_noop(env.port(), user, command.encode())
    assert lines == [lines[-1]] and lines[-1].startswith(b"A BAD"), lines


def test_mailstore_refuses_an_over_long_pattern_from_any_caller(env: ImapEnv, user: str) -> None:
    # ListMailboxes matches patterns in the mailstore too; a caller other than IMAP gets the bound
    request = pb.ListMailboxesRequest(account=user, pattern="*" * (MAX_PATTERN_BYTES + 1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        env.run(lambda: env.client.store.ListMailboxes(request, timeout=ANSWER_WITHIN))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    flood = pb.ListMailboxesRequest(account=user, pattern=FLOODS["mixed"], subscribed_only=True)
    assert not env.run(lambda: env.client.store.ListMailboxes(flood, timeout=ANSWER_WITHIN)).mailboxes


@pytest.mark.parametrize("pattern", FLOODS.values(), ids=FLOODS.keys())
def test_lsub_wildcard_flood_is_answered_quickly(env: ImapEnv, user: str, pattern: str) -> None:
    # LSUB's pattern is matched in the IMAP process (mailbox_list.select, the linear automaton)
    lines = attack_while_noop(env.port(), user, f'LSUB "" "{pattern}"'.encode())
    assert lines[-1].startswith(b"A OK") and len(lines) == 1


def test_list_extended_several_flood_patterns_are_answered_quickly(env: ImapEnv, user: str) -> None:
    # RFC 5258: several patterns, selection and return options (STATUS: RFC 5819), all at the bound
    patterns = " ".join(f'"{p}"' for p in (FLOODS["stars"], FLOODS["mixed"], FLOODS["star-literal"]))
    command = f'LIST (SUBSCRIBED RECURSIVEMATCH) "" ({patterns}) RETURN (CHILDREN STATUS (MESSAGES))'
    lines = attack_while_noop(env.port(), user, command.encode())
    assert lines[-1].startswith(b"A OK") and len(lines) == 1


# ---------------------------------------------------------------- the matcher itself


def reference_match(pattern: str, name: str) -> bool:
    """RFC 3501 §6.3.8 by the definition, as a table over (pattern prefix, name prefix)."""
    # table[i][j]: pattern[:i] matches name[:j]
    table = [[False] * (len(name) + 1) for _ in range(len(pattern) + 1)]
    table[0][0] = True
    for i, p in enumerate(pattern, 1):
        for j in range(len(name) + 1):
            if p == "*":
                table[i][j] = table[i - 1][j] or (j > 0 and table[i][j - 1])
            elif p == "%":
                table[i][j] = table[i - 1][j] or (j > 0 and name[j - 1] != "/" and table[i][j - 1])
            else:
                table[i][j] = j > 0 and name[j - 1] == p and table[i - 1][j - 1]
    return table[len(pattern)][len(name)]


ALPHABET = st.sampled_from("ab/*%")


@given(pattern=st.text(ALPHABET, max_size=12), name=st.text(st.sampled_from("ab/"), max_size=12))
@settings(max_examples=3000, deadline=None)
def test_matcher_agrees_with_the_definition(pattern: str, name: str) -> None:
    assert matches(pattern, name) is reference_match(pattern, name)


@given(
    patterns=st.lists(st.text(ALPHABET, max_size=8), min_size=1, max_size=4),
    name=st.text(st.sampled_from("ab/"), max_size=10),
)
@settings(max_examples=1500, deadline=None)
def test_several_patterns_match_what_any_one_matches(patterns: list[str], name: str) -> None:
    assert MailboxPatterns(patterns).matches(name) is any(reference_match(p, name) for p in patterns)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        # RFC 3501 §6.3.8 / RFC 9051 §6.3.9: "%" stops at the hierarchy delimiter, "*" does not
        ("*", "foo/bar/baz", True),
        ("%", "foo", True),
        ("%", "foo/bar", False),
        ("foo/%", "foo/bar", True),
        ("foo/%", "foo/bar/baz", False),
        ("foo/*", "foo/bar/baz", True),
        ("foo%", "foo/bar", False),
        ("foo*", "foo/bar", True),
        ("%/%", "foo/bar", True),
        ("%/%", "foo", False),
        ("~smith/Mail/%", "~smith/Mail/foo", True),  # RFC 3501 §6.3.8's example
        ("", "", True),
        ("", "INBOX", False),
        ("INBOX", "INBOX", True),
        ("a.b", "axb", False),  # no regex leaks: "." "(" "[" are plain characters
        ("a(b[", "a(b[", True),
        ("%%*%", "x/y", True),  # a run of wildcards holding "*" is "*"
        ("%%", "x/y", False),  # a run of "%" alone stays "%"
        ("Entw%rfe", "Entwürfe", True),  # characters, not bytes
    ],
)
def test_rfc_examples(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


def test_the_matcher_is_linear_in_the_name() -> None:
    # The old regex took exponential time in the stars; this counts steps, not seconds: one pass
    # over the name per pattern, whatever the wildcards (a budget of operations, not a timing).
    steps = 0

    class Counting(str):
        def __iter__(self) -> Iterator[str]:
            nonlocal steps
            for ch in str.__iter__(self):
                steps += 1
                yield ch

    name = Counting("a" * 999)
    assert not MailboxPatterns(["*" * 999 + "x", "%a" * 499 + "x"]).matches(name)
    assert steps <= len(name)


def test_patterns_past_the_bounds_raise() -> None:
    with pytest.raises(PatternTooLongError):
        MailboxPatterns(["*" * (MAX_PATTERN_BYTES + 1)])
    with pytest.raises(PatternTooLongError):
        MailboxPatterns(["é" * (MAX_PATTERN_BYTES // 2 + 1)])  # bytes, not characters
    with pytest.raises(PatternTooLongError):
        MailboxPatterns(["*" * MAX_PATTERN_BYTES] * (MAX_PATTERNS_BYTES // MAX_PATTERN_BYTES + 1))
    MailboxPatterns(["*" * MAX_PATTERN_BYTES] * (MAX_PATTERNS_BYTES // MAX_PATTERN_BYTES))


# ---------------------------------------------------------------- SEARCH


SEARCH_MESSAGES = 50


@pytest.fixture(scope="module")
def searcher(env: ImapEnv) -> str:
    user = env.new_account()
    for i in range(SEARCH_MESSAGES):
        env.deliver(user, message(f"subject {i} " + "a" * 200, body=("aaaa " * 2000 + f"\r\n{i}\r\n")))
    return user


def _alternating(pairs: int, leaf: str = "ALL") -> str:
    """NOT OR ALL NOT OR ALL ... leaf: three protobuf levels per pair on the wire to the mailstore."""
    criteria = leaf
    for _ in range(pairs):
        criteria = f"NOT OR ALL {criteria}"
    return criteria


# What a hostile client sends, and whether the server answers OK (bounded work) or BAD (refused).
HOSTILE_SEARCHES = {
    "nested-not": ("SEARCH " + "NOT " * MAX_DEPTH + "ALL", b"A OK"),
    "too-deep": ("SEARCH " + "NOT " * (MAX_DEPTH + 1) + "ALL", b"A BAD"),
    "or-chain": ("SEARCH " + "OR ALL " * MAX_DEPTH + "ALL", b"A OK"),  # a long OR chain stays flat
    "left-or-chain": ("SEARCH " + "OR " * MAX_DEPTH + "ALL" + " SEEN" * MAX_DEPTH, b"A OK"),
    "nested-parens": ("SEARCH " + "(" * MAX_DEPTH + "ALL" + ")" * MAX_DEPTH, b"A OK"),
    "alternating-at-bound": ("SEARCH " + _alternating(MAX_WIRE_DEPTH // 3, "UID 1:*"), b"A OK"),
    "alternating-too-deep": ("SEARCH " + _alternating(MAX_WIRE_DEPTH // 3 + 1), b"A BAD"),
    "keys-at-bound": ("SEARCH " + " ".join(["SEEN"] * (MAX_KEYS - 1)), b"A OK"),  # + their AND
    "many-keys": ("SEARCH " + " ".join(["SEEN"] * 10000), b"A BAD"),
    "long-text": ('SEARCH TEXT "' + "a" * 60000 + '"', b"A OK"),
    "many-body-strings": ("SEARCH " + " ".join([f'BODY "{"a" * 900}"'] * 60), b"A OK"),
    "long-body-literal": (f"SEARCH BODY {{{3_000_000}+}}\r\n" + "a" * 3_000_000, b"A BAD"),
    "too-much-text": ("SEARCH " + " ".join([f'TEXT "{"a" * 9000}"'] * 8), b"A BAD"),
}


@pytest.mark.parametrize(("command", "answer"), HOSTILE_SEARCHES.values(), ids=HOSTILE_SEARCHES.keys())
def test_hostile_search_is_answered_quickly_or_refused(
    env: ImapEnv, searcher: str, command: str, answer: bytes
) -> None:
    lines = attack_while_noop(env.port(), searcher, command.encode(), select="INBOX")
    assert lines[-1].startswith(answer), lines[-1][:200]
    if answer == b"A BAD":
        assert len(lines) == 1  # refused before any work: no untagged SEARCH
    else:
        assert lines[0].startswith(b"* SEARCH")


BIG_MAILBOX = 1000


@pytest.fixture(scope="module")
def big_searcher(env: ImapEnv) -> str:
    user = env.new_account()

    async def fill() -> None:
        for i in range(BIG_MAILBOX):
            await append(env.client, user, "INBOX", message(f"big {i}", body="aaaa " * 400 + "\r\n"))

    env.run(fill, timeout=300)
    return user


def test_search_of_a_big_mailbox_lets_others_run(env: ImapEnv, big_searcher: str) -> None:
    # 999 keys x 1,000 messages: about a second of evaluation in the mailstore, which gives the
    # loop back every SEARCH_SLICE (the IMAP server shares that loop here): a NOOP sent meanwhile
    # is answered while the SEARCH is still running, not after it.
    attacker = _connect(env.port(), big_searcher)
    bystander = _connect(env.port(), big_searcher, timeout=NOOP_WITHIN + 1)
    try:
        assert attacker.command("S", "SELECT INBOX")[-1].startswith(b"S OK")
        started = time.monotonic()
        attacker.send(b"A SEARCH " + b" ".join([b"UNSEEN"] * (MAX_KEYS - 1)) + b"\r\n")
        time.sleep(0.2)  # the SEARCH is being evaluated by now
        assert bystander.command("N", "NOOP")[-1].startswith(b"N OK")
        attacker.sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # no answer yet: the NOOP did not wait for it
            attacker.sock.recv(1)
        attacker.sock.setblocking(True)
        lines = attacker.until("A")
        assert lines[-1].startswith(b"A OK") and time.monotonic() - started < ANSWER_WITHIN
        assert lines[0].startswith(b"* SEARCH 1 2 3") and len(lines[0].split()) == 2 + BIG_MAILBOX
    finally:
        attacker.close()
        bystander.close()


# ---------------------------------------------------------------- liveness


def http_status(url: str, timeout: float) -> int | None:
    """The HTTP status of GET url, or None when no answer came within `timeout`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as e:
        return e.code
    except (TimeoutError, urllib.error.URLError) as e:
        assert isinstance(e, TimeoutError) or isinstance(e.reason, TimeoutError), e
        return None


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="live-test-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _run(loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        return await make()

    return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(10)


async def _always_ready() -> bool:
    return True


def test_live_is_not_answered_while_the_event_loop_is_blocked(
    loop_thread: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "STALL_LOG", 1.0)
    server = metrics.MetricsServer("127.0.0.1", 0, _always_ready)
    _run(loop_thread, server.start)
    url = f"http://{server.address}/live"
    try:
        assert http_status(url, timeout=2) == 200
        blocked = threading.Event()

        def freeze_the_loop() -> None:  # what the backtracking LIST did, in miniature
            blocked.set()
            time.sleep(3)

        loop_thread.call_soon_threadsafe(freeze_the_loop)
        assert blocked.wait(2)
        assert http_status(url, timeout=1.5) is None  # the TCP accept happens; no answer comes
        deadline = time.monotonic() + 10
        while (status := http_status(url, timeout=1)) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200  # alive again once the loop runs
        stalls = [r for r in caplog.records if r.getMessage().startswith("event loop blocked")]
        assert len(stalls) == 1 and "freeze_the_loop" in stalls[0].getMessage()  # where it was stuck
    finally:
        _run(loop_thread, server.stop)


def test_live_answers_503_when_the_heartbeat_stops(
    loop_thread: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "LIVE_STALE", 0.5)
    server = metrics.MetricsServer("127.0.0.1", 0, _always_ready)
    _run(loop_thread, server.start)
    url = f"http://{server.address}/live"
    try:
        assert http_status(url, timeout=2) == 200
        task = server.heartbeat._task
        assert task is not None
        loop_thread.call_soon_threadsafe(task.cancel)
        time.sleep(1.0)
        assert http_status(url, timeout=2) == 503
    finally:
        _run(loop_thread, server.stop)


# ---------------------------------------------------------------- data folder and database modes


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    # what a container or a careless shell gives: new files group- and world-readable
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def _serve_mailstore_once(data_dir: Path) -> None:
    """`mailstack serve mailstore` in this process: start, create an account (a password hash
    written through the WAL), stop."""
    out, stop = io.StringIO(), asyncio.Event()
    task = asyncio.create_task(run_services(settings_for(data_dir), ["mailstore"], stop_event=stop, out=out))
    for _ in range(500):  # the banner's "data" line comes once the mailstore listens
        if "data" in out.getvalue() or task.done():
            break
        await asyncio.sleep(0.02)
    assert not task.done(), task.exception()
    address = next(line.split()[-1] for line in out.getvalue().splitlines() if line.startswith("mailstore"))
    client = open_client(address, data_dir)
    try:
        name = f"modes{time.monotonic_ns()}@example.test"
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=name, password=PASSWORD))
        database = data_dir / "metadata.sqlite3"
        for suffix in ("", "-wal", "-shm"):  # while the store is open, its WAL files exist
            assert mode_of(Path(f"{database}{suffix}")) == 0o600, suffix
    finally:
        await client.channel.close(None)
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_new_data_folder_and_database_are_private(tmp_path: Path, lax_umask: None) -> None:
    data_dir = tmp_path / "new" / "data"
    await _serve_mailstore_once(data_dir)
    assert mode_of(data_dir) == 0o700
    assert mode_of(data_dir / "metadata.sqlite3") == 0o600
    assert mode_of(data_dir.parent) == 0o755  # a parent it had to create is not its own


async def test_open_data_folder_and_database_are_tightened_with_a_warning(
    tmp_path: Path, lax_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    await _serve_mailstore_once(data_dir)
    # an older version, a restored backup or a lax umask left everything readable
    data_dir.chmod(0o755)
    for name in ("metadata.sqlite3", "metadata.sqlite3-wal", "metadata.sqlite3-shm"):
        path = data_dir / name
        path.touch()
        path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="mailstack.storage")
    await _serve_mailstore_once(data_dir)
    assert mode_of(data_dir) == 0o700
    assert mode_of(data_dir / "metadata.sqlite3") == 0o600
    warned = {r.getMessage().split()[1] for r in caplog.records if "tightened" in r.getMessage()}
    assert {str(data_dir), *(f"{data_dir / 'metadata.sqlite3'}{s}" for s in ("", "-wal", "-shm"))} <= warned


def test_a_folder_that_cannot_be_tightened_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailstack.storage")
    folder = tmp_path / "volume"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)

    def refuse(path: object, mode: int) -> None:  # what a volume root owned by root answers
        raise PermissionError(1, "Operation not permitted")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "chmod", refuse)
        private_dir(folder)  # starts anyway
    assert mode_of(folder) == 0o755
    assert any("could not be tightened" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- the deployed topology


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    folder = tmp_path_factory.mktemp("attack-patterns-topology")
    with running_topology(folder) as topo:
        yield topo


def _topology_account(topo: Topology) -> str:
    user = f"attacker{time.monotonic_ns()}@example.test"
    # Each call with an identity the authorization table allows for it, as the deployment's callers.
    with admin_channel(topo) as admin, open_sync_channel(topo.mailstore_addr, identity_of(topo, "imap")) as imap:
        pbg.AdminStub(admin).CreateAccount(pb.CreateAccountRequest(name=user, password=PASSWORD), timeout=10)
        store = pbg.MailstoreStub(imap)
        for i in range(MAILBOXES // 3):
            name = f"aaaa{i}/aaaa/aaaaaaaaaaaaaaaaaaaa"
            store.CreateMailbox(pb.CreateMailboxRequest(account=user, name=name), timeout=10)
            store.Subscribe(pb.SubscribeRequest(account=user, name=name, subscribed=True), timeout=10)
    return user


@pytest.mark.slow
def test_topology_list_lsub_and_search_attacks_leave_imap_responsive(topology: Topology) -> None:
    with topology.diagnose():
        user = _topology_account(topology)
        imap = topology.imaps[0]
        port = imap.ports["imap"]
        live = f"http://127.0.0.1:{imap.env['MAILSTACK_METRICS_PORT']}/live"  # what the kubelet asks
        for command in (f'LIST "" "{FLOODS["stars"]}"', f'LSUB "" "{FLOODS["mixed"]}"'):
            lines = attack_while_noop(port, user, command.encode())
            assert lines[-1].startswith(b"A OK")
            assert http_status(live, timeout=2) == 200
        lines = attack_while_noop(port, user, f'LIST "" "{"*" * 1001}"'.encode())
        assert lines[-1].startswith(b"A BAD")
        for name in ("or-chain", "alternating-at-bound", "many-keys", "long-body-literal"):
            command, answer = HOSTILE_SEARCHES[name]
            assert attack_while_noop(port, user, command.encode(), select="INBOX")[-1].startswith(answer), name
        # and the process still stops on SIGTERM, as a stuck loop would not
        assert topology.imaps[0].stop(timeout=15) == 0
