"""NOTIFY (RFC 5465) across processes: the hints reach a session on another imap process through
Redis, and in one process without Redis through the mailstore's Watch stream; a lost event
source is made up for by re-reading the watched mailboxes (ADR 0015, ADR 0022)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.test_imap_sessions import _serve_imap
from tests.fixtures.imap_server import ImapEnv, RawImap, imap_env, message
from tests.fixtures.redis_server import RedisServer

WAIT = 10.0  # generous bound for a pushed line (never a timing assertion)
STATUS_NEW = re.compile(rb"\(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)")


def _until(raw: RawImap, wanted: bytes, timeout: float = WAIT) -> list[bytes]:
    """Lines received (no command in progress) up to the one containing `wanted`."""
    raw.sock.settimeout(timeout)
    lines = []
    while True:
        lines.append(raw.line())
        if wanted in lines[-1]:
            return lines


def _watcher(env: ImapEnv, user: str, port: int | None = None) -> RawImap:
    raw = RawImap(port or env.port())
    raw.login(user)
    groups = "(inboxes (MessageNew MessageExpunge)) (subtree Box (MessageNew MessageExpunge FlagChange MailboxName))"
    assert raw.command("n", f"NOTIFY SET {groups}")[-1].startswith(b"n OK")
    return raw


def _changes_arrive(env: ImapEnv, user: str, watcher: RawImap, writer: RawImap) -> None:
    """Another session's APPEND and CREATE, and a delivery by the mailstore, reach the watcher
    while it sends nothing."""
    data = message("to box")
    writer.send(b"a APPEND Box {%d+}\r\n" % len(data) + data + b"\r\n")
    writer.until("a")
    assert STATUS_NEW.fullmatch(_until(watcher, b"* STATUS Box")[-1].split(b" ", 3)[3])
    writer.command("c", "CREATE Box/Child")
    assert _until(watcher, b"Box/Child")[-1] == b'* LIST (\\HasNoChildren) "/" Box/Child'
    env.deliver(user, message("delivered"))
    assert STATUS_NEW.fullmatch(_until(watcher, b"* STATUS INBOX")[-1].split(b" ", 3)[3])


@pytest.mark.slow
def test_notify_across_two_imap_processes_with_redis(tmp_path: Path, restartable_redis_server: RedisServer) -> None:
    redis = restartable_redis_server
    with imap_env(tmp_path, events_url=redis.url, imap_poll_interval=3600) as env:
        proc, port = _serve_imap(tmp_path, env, redis.url)
        try:
            user = env.new_account()
            writer = RawImap(env.port())  # on the first process
            writer.login(user)
            writer.command("c", "CREATE Box")
            watcher = _watcher(env, user, port)  # on the second
            _changes_arrive(env, user, watcher, writer)
            # Redis lost for a while: the change made meanwhile is told after the reconnect
            # (a "resync" re-reads the watched mailboxes), not lost
            redis.stop()
            env.deliver(user, message("while redis was down"))
            redis.start()
            assert _until(watcher, b"* STATUS INBOX", timeout=30)[-1].startswith(b"* STATUS INBOX (MESSAGES 2 ")
            for raw in (watcher, writer):
                raw.close()
        finally:
            proc.terminate()
            proc.wait(15)


def test_notify_in_one_process_without_redis(tmp_path: Path) -> None:
    with imap_env(tmp_path, imap_poll_interval=3600) as env:
        user = env.new_account()
        writer = RawImap(env.port())
        writer.login(user)
        writer.command("c", "CREATE Box")
        watcher = _watcher(env, user)
        _changes_arrive(env, user, watcher, writer)
        # the selected mailbox: told by its own responses, not by STATUS (RFC 5465 §6.1)
        watcher.command("s", "SELECT Box")
        data = message("second")
        writer.send(b"a APPEND Box {%d+}\r\n" % len(data) + data + b"\r\n")
        writer.until("a")
        lines = watcher.command("n", "NOOP")
        assert b"* 2 EXISTS" in lines and not any(line.startswith(b"* STATUS Box") for line in lines)
        # waiting for its next command with NOTIFY set, it is told BYE at shutdown at once (not
        # after the grace for busy sessions); the pause lets it get back to waiting after NOOP
        time.sleep(0.5)
        started = time.monotonic()
        env.stop_imap(env.imap, grace=30.0)
        assert _until(watcher, b"* BYE")[-1].startswith(b"* BYE")
        assert time.monotonic() - started < 15.0
        for raw in (watcher, writer):
            raw.close()
