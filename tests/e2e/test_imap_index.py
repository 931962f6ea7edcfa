"""The IMAP process's mailbox index (ADR 0041) seen from clients: two frontends (two imap
processes over Redis) serving one mailbox never show a stale flag or count after the next command
(RFC 3501 §5.2, RFC 9051 §7.5.1), also when the change events are lost (Redis down) or the change
log lost a change without saying so; and the index holds no more messages than its setting."""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_imap_sessions import _serve_imap  # a second imap process on the same store and bus
from tests.fixtures.imap_server import ImapEnv, RawImap, imap_env, message
from tests.fixtures.redis_server import RedisServer

FETCH = re.compile(rb"^\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\)")
FLAGS = ["\\Seen", "\\Flagged", "\\Answered", "$Work", "$Later"]

Picture = dict[int, frozenset[str]]  # uid -> flags (without the session's \Recent)


def _fetched(lines: list[bytes]) -> Picture:
    out = {}
    for line in lines:
        if m := FETCH.match(line):
            out[int(m[2])] = frozenset(m[3].decode().split()) - {"\\Recent"}
    return out


def _uids(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition(":")
        out.update(range(int(low), int(high or low) + 1))
    return out


def _truth(raw: RawImap) -> Picture:
    """What the mailstore holds now, read through the other frontend."""
    return _fetched(raw.command("t", "UID FETCH 1:* (FLAGS)"))


def _exists(lines: list[bytes]) -> int | None:
    found = [int(line.split()[1]) for line in lines if line.startswith(b"* ") and line.endswith(b" EXISTS")]
    return found[-1] if found else None


def _select(raw: RawImap, uidvalidity: int) -> tuple[int | None, Picture, list[bytes]]:
    """A QRESYNC SELECT from MODSEQ 1 (RFC 7162 §3.2.5): its FETCH responses show the flags the
    session's view (built from the index) holds for every message."""
    lines = raw.command("s", f"SELECT INBOX (QRESYNC ({uidvalidity} 1))")
    assert lines[-1].startswith(b"s OK"), lines
    return _exists(lines), _fetched(lines), lines


def _first_unseen(lines: list[bytes]) -> int:
    for line in lines:
        if m := re.match(rb"\* OK \[UNSEEN (\d+)\]", line):
            return int(m[1])
    return 0


def _expected_unseen(truth: Picture) -> int:
    return next((seq for seq, uid in enumerate(sorted(truth), 1) if "\\Seen" not in truth[uid]), 0)


@pytest.fixture
def frontends(tmp_path: Path, restartable_redis_server: RedisServer) -> Iterator[tuple[ImapEnv, int, RedisServer]]:
    """Frontend A in this process (env.port()), frontend B a process of its own (the int), one
    Redis between them; both poll only hourly, so nothing here converges by polling."""
    redis = restartable_redis_server
    with imap_env(tmp_path, events_url=redis.url, imap_poll_interval=3600) as env:
        proc, port = _serve_imap(tmp_path, env, redis.url)
        try:
            yield env, port, redis
        finally:
            proc.terminate()
            proc.wait(15)


def _session(port: int, user: str, qresync: bool = True) -> RawImap:
    raw = RawImap(port)
    raw.login(user)
    if qresync:
        assert raw.command("e", "ENABLE QRESYNC")[-1].startswith(b"e OK")
    return raw


def _uidvalidity(raw: RawImap) -> int:
    lines = raw.command("s0", "SELECT INBOX")
    return int(next(re.search(rb"UIDVALIDITY (\d+)", line)[1] for line in lines if b"UIDVALIDITY" in line))  # type: ignore[index]


def _append(raw: RawImap, flags: str) -> None:
    data = message(f"m{random.random()}")
    raw.send(b"a APPEND INBOX (%s) {%d+}\r\n" % (flags.encode(), len(data)) + data + b"\r\n")
    assert raw.until("a")[-1].startswith(b"a OK")


def _change(raw: RawImap, rng: random.Random, truth: Picture) -> None:
    """One change by the other frontend: a flag STORE, an APPEND or an EXPUNGE."""
    action = rng.random()
    if action < 0.25 or len(truth) < 2:
        _append(raw, " ".join(rng.sample(FLAGS, rng.randint(0, 2))))
    elif action < 0.8:
        uid, sign = rng.choice(sorted(truth)), rng.choice("+-")
        flags = " ".join(rng.sample(FLAGS, rng.randint(1, 3)))
        assert raw.command("st", f"UID STORE {uid} {sign}FLAGS.SILENT ({flags})")[-1].startswith(b"st OK")
    else:
        uid = rng.choice(sorted(truth))
        raw.command("d", f"UID STORE {uid} +FLAGS.SILENT (\\Deleted)")
        assert raw.command("x", f"UID EXPUNGE {uid}")[-1].startswith(b"x OK")


def _fill(env: ImapEnv, user: str, count: int) -> None:
    for n in range(count):
        env.deliver(user, message(f"seed {n}"))


def _apply_noop(picture: Picture, lines: list[bytes]) -> None:
    """A kept-selected session's picture after the untagged updates of one command."""
    for line in lines:
        if m := re.match(rb"\* VANISHED (\S+)$", line):
            for uid in _uids(m[1].decode()):
                picture.pop(uid, None)
    picture.update(_fetched(lines))


def _check_round(env: ImapEnv, reader: RawImap, kept: RawImap, kept_picture: Picture, truth: Picture, uv: int) -> None:
    exists, seen, lines = _select(reader, uv)
    assert exists == len(truth), lines
    assert seen == truth, lines  # every message, each with its current flags: nothing stale
    assert _first_unseen(lines) == _expected_unseen(truth)
    noop = kept.command("n", "NOOP")
    _apply_noop(kept_picture, noop)
    if (count := _exists(noop)) is not None:
        assert count == len(truth), noop
    for uid, flags in kept_picture.items():  # every message it knows, as it is now
        assert truth.get(uid) == flags, (uid, noop)


def _two_frontends(env: ImapEnv, other_port: int, count: int) -> tuple[RawImap, RawImap, RawImap, Picture, int]:
    """A new account with `count` messages: a writer on frontend B, and on frontend A a reader
    (whose SELECT indexes the mailbox) and a session kept selected; their picture and UIDVALIDITY."""
    user = env.new_account()
    _fill(env, user, count)
    writer = _session(other_port, user)
    uv = _uidvalidity(writer)
    writer.command("i", "STORE 1:* +FLAGS.SILENT ($Init)")  # every MODSEQ above 1
    reader, kept = _session(env.port(), user), _session(env.port(), user)
    _select(reader, uv)
    _, kept_picture, _ = _select(kept, uv)
    return writer, reader, kept, kept_picture, uv


@pytest.mark.slow
def test_another_frontends_changes_show_at_the_next_command(frontends: tuple[ImapEnv, int, RedisServer]) -> None:
    env, other_port, _ = frontends
    writer, reader, kept, kept_picture, uv = _two_frontends(env, other_port, 6)
    rng = random.Random(3501)
    for _ in range(12):
        truth = _truth(writer)
        for _ in range(rng.randint(1, 3)):
            _change(writer, rng, truth)
            truth = _truth(writer)
        _check_round(env, reader, kept, kept_picture, truth, uv)
    for raw in (writer, reader, kept):
        raw.close()


@pytest.mark.slow
def test_lost_events_are_repaired_at_the_next_command(frontends: tuple[ImapEnv, int, RedisServer]) -> None:
    env, other_port, redis = frontends
    writer, reader, kept, kept_picture, uv = _two_frontends(env, other_port, 5)
    redis.stop()  # every change event from now on is lost
    try:
        rng = random.Random(9051)
        for _ in range(6):
            truth = _truth(writer)
            _change(writer, rng, truth)
            _check_round(env, reader, kept, kept_picture, _truth(writer), uv)
    finally:
        redis.start()
    for raw in (writer, reader, kept):
        raw.close()


@pytest.mark.slow
def test_a_change_the_log_lost_is_repaired_by_listing_again(frontends: tuple[ImapEnv, int, RedisServer]) -> None:
    env, other_port, _ = frontends
    user = env.new_account()
    _fill(env, user, 4)
    writer = _session(other_port, user)
    uv = _uidvalidity(writer)
    writer.command("i", "STORE 1:* +FLAGS.SILENT ($Init)")
    reader = _session(env.port(), user)
    _select(reader, uv)
    writer.command("d", "UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    writer.command("x", "UID EXPUNGE 2")
    # the log forgets the expunge without saying so (no pruned MODSEQ): only the count tells
    database = Path(env.settings.effective_metadata_url.removeprefix("sqlite://"))
    with sqlite3.connect(database) as db:
        assert db.execute("DELETE FROM changes WHERE kind = 'expunge' AND uid = 2").rowcount == 1
    truth = _truth(writer)
    exists, seen, lines = _select(reader, uv)
    assert exists == 3 == len(truth) and seen == truth, lines
    writer.close()
    reader.close()


def test_the_index_holds_no_more_messages_than_its_setting(tmp_path: Path) -> None:
    with imap_env(tmp_path) as env:
        server = env.start_imap(imap_index_messages=14)  # mailboxes of 5 messages count 6 each
        port = env.port(len(env.servers) - 1)
        user = env.new_account()
        raw = _session(port, user, qresync=False)
        for name in ("A", "B", "C"):
            assert raw.command("c", f"CREATE {name}")[-1].startswith(b"c OK")
            for n in range(5):
                env.append(user, name, message(f"{name}{n}"))
        assert server._services is not None
        index = server._services.index
        for name in ("A", "B", "A", "C", "B", "C", "A"):
            lines = raw.command("s", f"SELECT {name}")
            assert b"* 5 EXISTS" in lines, lines
            assert index.held <= 14 and len(index) <= 2
        assert (user, "A") in index and (user, "C") in index and (user, "B") not in index  # B least recent
        # a mailbox larger than the whole bound is served, not held
        for n in range(20):
            env.append(user, "B", message(f"big{n}"))
        assert b"* 25 EXISTS" in raw.command("s", "SELECT B")
        assert (user, "B") not in index and index.held <= 14
        raw.close()


def test_a_mailbox_replaced_under_its_name_or_another_accounts_is_never_served_from_the_index(
    tmp_path: Path,
) -> None:
    with imap_env(tmp_path) as env:
        user, other = env.new_account(), env.new_account()
        raw, stranger = _session(env.port(), user, qresync=False), _session(env.port(), other, qresync=False)
        for name in ("Box", "Spare"):
            assert raw.command("c", f"CREATE {name}")[-1].startswith(b"c OK")
        for n in range(3):
            env.append(user, "Box", message(f"old{n}"), ("\\Seen",))
        env.append(user, "Spare", message("spare"))
        first = raw.command("s", "SELECT Box")
        assert b"* 3 EXISTS" in first
        assert raw.command("u", "UNSELECT")[-1].startswith(b"u OK")
        # another account's mailbox of the same name: its own, and its own rights
        assert stranger.command("s", "SELECT Box")[-1].startswith(b"s NO")
        assert stranger.command("c", "CREATE Box")[-1].startswith(b"c OK")
        assert b"* 0 EXISTS" in stranger.command("s", "SELECT Box")
        # deleted: NO, and forgotten
        assert raw.command("d", "DELETE Box")[-1].startswith(b"d OK")
        assert raw.command("s", "SELECT Box")[-1].startswith(b"s NO")
        # another mailbox under the name (renamed over it): its messages, its UIDVALIDITY
        assert raw.command("r", "RENAME Spare Box")[-1].startswith(b"r OK")
        lines = raw.command("s", "SELECT Box")
        assert b"* 1 EXISTS" in lines and b"* OK [UNSEEN 1] first unseen" in lines, lines
        old_validity = next(line for line in first if b"UIDVALIDITY" in line)
        assert old_validity not in lines
        raw.close()
        stranger.close()


def _fetch_flags(kept: RawImap, announced: int) -> tuple[Picture, int, list[bytes]]:
    """FETCH 1:* (UID FLAGS) on a kept session: what it showed, and the EXISTS count after it.
    No response names a sequence number the session was not told of (by SELECT or an EXISTS before
    it), and none announces an expunge (RFC 9051 §7.5.1: not during FETCH by sequence number)."""
    lines = kept.command("f", "FETCH 1:* (UID FLAGS)")
    assert lines[-1].startswith(b"f OK"), lines
    for line in lines:
        assert not line.endswith(b" EXPUNGE") and not line.startswith(b"* VANISHED"), lines
        if line.endswith(b" EXISTS"):
            announced = int(line.split()[1])
        elif m := FETCH.match(line):
            assert int(m[1]) <= announced, lines
    return _fetched(lines), announced, lines


@pytest.mark.slow
@pytest.mark.parametrize("lose_events", [False, True])
def test_fetch_flags_shows_another_frontends_change_at_once(
    frontends: tuple[ImapEnv, int, RedisServer], lose_events: bool
) -> None:
    """FETCH FLAGS answers from the session's view after one catch-up from the change log: every
    message the session knows shows the flags stored by the other frontend before the FETCH, with
    the events delivered or lost; new messages come as EXISTS after it, never as FETCH responses."""
    env, other_port, redis = frontends
    writer, reader, kept, _, uv = _two_frontends(env, other_port, 6)
    exists, _, _ = _select(kept, uv)
    assert exists is not None
    known, announced = _truth(writer), exists
    if lose_events:
        redis.stop()
    try:
        rng = random.Random(7162)
        for _ in range(10):
            for _ in range(rng.randint(1, 3)):
                _change(writer, rng, _truth(writer))
            truth = _truth(writer)
            shown, announced, lines = _fetch_flags(kept, announced)
            assert set(shown) == set(known) & set(truth), lines  # expunged ones left out, new ones not shown
            for uid, flags in shown.items():
                assert flags == truth[uid], (uid, lines)  # nothing stale
            # EXISTS after it counts the new messages (expunges stay untold: FETCH by number)
            assert announced - exists == len(set(truth) - set(known)), lines
            known, exists = truth, announced
    finally:
        if lose_events:
            redis.start()
    for raw in (writer, reader, kept):
        raw.close()


def test_a_sessions_own_expunge_is_told_even_when_another_sessions_read_just_ran(tmp_path: Path) -> None:
    # RFC 9051 §7.5.1: the EXPUNGE command's own expunges are told before its OK. Another session's
    # catch-up read right before (after its APPEND) must not stand in for this session's: it began
    # before this EXPUNGE and does not show it (the model test found a session that then held a
    # message the store no longer had).
    with imap_env(tmp_path, imap_poll_interval=3600) as env:
        user = env.new_account()
        writer, expunger = RawImap(env.port()), RawImap(env.port())
        try:
            for raw in (writer, expunger):
                raw.login(user)
                assert raw.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
            held = 0  # the messages the expunging session was told it has
            for n in range(20):
                data = message(f"deleted {n}")
                writer.send(b"a APPEND INBOX (\\Deleted) {%d+}\r\n" % len(data) + data + b"\r\n")
                assert writer.until("a")[-1].startswith(b"a OK")  # its catch-up read follows at once
                told = expunger.command("e", "EXPUNGE")
                assert told[-1] == b"e OK completed", told
                exists = [line for line in told if line.endswith(b" EXISTS")]
                held = int(exists[-1].split()[1]) if exists else held
                held -= sum(line.endswith(b" EXPUNGE") for line in told)
                listed = expunger.command("f", "UID SEARCH ALL")
                assert held == 0 and listed[0] == b"* SEARCH", (n, told, listed)  # every one was \Deleted
        finally:
            for raw in (writer, expunger):
                raw.close()
