"""Many sessions on one mailbox (RFC 9051 §7.5.1, RFC 3501 §2.3.2): EXISTS, FETCH FLAGS and
EXPUNGE of other sessions' changes at the allowed points, \\Recent in exactly one session, IDLE
(RFC 2177) pushed through the event bus -- also from a second imap process over Redis -- and
convergence by polling when Redis is down. Shutdown says BYE to IDLE sessions."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.imap_server import ImapEnv, RawImap, imap_env, message
from tests.fixtures.mailstore import identity_env
from tests.fixtures.ports import free_port
from tests.fixtures.redis_server import RedisServer

WAIT = 10.0  # generous bound for a pushed line (never a timing assertion)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    # a poll interval far beyond any test: what arrives in IDLE was pushed
    with imap_env(tmp_path_factory.mktemp("imap-sessions"), imap_poll_interval=3600) as e:
        yield e


def _session(env: ImapEnv, user: str, mailbox: str = "INBOX", port: int | None = None) -> RawImap:
    raw = RawImap(port or env.port())
    raw.login(user)
    assert raw.command("s", f"SELECT {mailbox}")[-1].startswith(b"s OK")
    return raw


def _idle_until(raw: RawImap, wanted: bytes, timeout: float = WAIT) -> list[bytes]:
    """Lines received while idling up to the one containing `wanted`."""
    raw.sock.settimeout(timeout)
    lines = []
    while True:
        line = raw.line()
        lines.append(line)
        if wanted in line:
            return lines


def test_other_sessions_changes_arrive_on_noop(env: ImapEnv) -> None:
    user = env.new_account()
    env.deliver(user, message("m1"))
    env.deliver(user, message("m2"))
    a, b = _session(env, user), _session(env, user)
    env.deliver(user, message("m3"))
    assert b"* 3 EXISTS" in a.command("n1", "NOOP")
    a.command("st", "STORE 1 +FLAGS.SILENT (\\Flagged)")
    lines = b.command("n2", "NOOP")
    assert b"* 3 EXISTS" in lines
    assert any(line.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged") for line in lines)
    a.close()
    b.close()


def test_silent_store_still_reports_another_sessions_flag_change(env: ImapEnv) -> None:
    # RFC 3501 §6.4.6: "Regardless of whether or not the .SILENT suffix was used, the server SHOULD
    # send an untagged FETCH response if a change to a message's flags from an external source is
    # observed." Here the external change is seen only through the session's own STORE.
    user = env.new_account()
    env.deliver(user, message("s1"))
    a, b = _session(env, user), _session(env, user)
    b.command("an", "STORE 1 +FLAGS (\\Answered)")
    lines = a.command("st", "STORE 1 +FLAGS.SILENT (\\Seen)") + a.command("n", "NOOP")
    fetched = [line for line in lines if line.startswith(b"* 1 FETCH")]
    assert fetched, lines
    assert b"\\Answered" in fetched[-1] and b"\\Seen" in fetched[-1]
    # and nothing is repeated once told
    assert not any(line.startswith(b"* 1 FETCH") for line in a.command("n2", "NOOP"))
    # a silent STORE that only does what this session asked stays silent
    lines = a.command("st2", "STORE 1 -FLAGS.SILENT (\\Seen)") + a.command("n3", "NOOP")
    assert not any(line.startswith(b"* 1 FETCH") for line in lines), lines
    a.close()
    b.close()


def test_expunge_is_never_announced_during_fetch_store_search(env: ImapEnv) -> None:
    user = env.new_account()
    for i in range(3):
        env.deliver(user, message(f"e{i}"))
    a, b = _session(env, user), _session(env, user)
    a.command("d", "STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert a.command("x", "EXPUNGE")[0] == b"* 2 EXPUNGE"
    # b still numbers the expunged message as 2 during FETCH/STORE/SEARCH
    lines = b.command("f", "FETCH 1:3 (UID)")
    assert not any(b"EXPUNGE" in line for line in lines)
    assert b"* 3 FETCH (UID 3)" in lines
    assert not any(b"EXPUNGE" in line for line in b.command("s1", "SEARCH ALL"))
    assert b.command("s2", "SEARCH UID 3")[0] == b"* SEARCH 3"
    assert not any(b"EXPUNGE" in line for line in b.command("st", "STORE 3 +FLAGS.SILENT (\\Seen)"))
    # UID FETCH and NOOP may announce it
    lines = b.command("n", "NOOP")
    assert b"* 2 EXPUNGE" in lines
    assert b.command("f2", "FETCH 2 (UID)")[0] == b"* 2 FETCH (UID 3)"
    a.close()
    b.close()


def test_recent_is_given_to_exactly_one_session(env: ImapEnv) -> None:
    user = env.new_account()
    env.deliver(user, message("r1"))
    a = _session(env, user)
    b = _session(env, user)
    assert a.command("s1", "SEARCH RECENT")[0] == b"* SEARCH 1"
    assert b.command("s2", "SEARCH RECENT")[0] == b"* SEARCH"
    env.deliver(user, message("r2"))
    first = b.command("n", "NOOP")
    second = a.command("n", "NOOP")
    assert b"* 1 RECENT" in first and b"* 1 RECENT" in second  # b claimed r2; a keeps only r1
    assert b.command("s3", "SEARCH RECENT")[0] == b"* SEARCH 2"
    assert a.command("s4", "SEARCH RECENT")[0] == b"* SEARCH 1"
    a.close()
    b.close()


def test_idle_gets_pushed_new_mail_flags_and_expunge(env: ImapEnv) -> None:
    user = env.new_account()
    env.deliver(user, message("i1"))
    idler, other = _session(env, user), _session(env, user)
    idler.send(b"i IDLE\r\n")
    assert idler.line() == b"+ idling"
    env.deliver(user, message("i2"))
    assert b"* 2 EXISTS" in _idle_until(idler, b"EXISTS")
    other.command("st", "STORE 1 +FLAGS.SILENT (\\Answered)")
    assert any(b"FLAGS (\\Answered" in line for line in _idle_until(idler, b"FETCH"))
    other.command("d", "STORE 2 +FLAGS.SILENT (\\Deleted)")
    other.command("x", "EXPUNGE")
    assert b"* 2 EXPUNGE" in _idle_until(idler, b"EXPUNGE")
    idler.send(b"DONE\r\n")
    assert idler.until("i")[-1] == b"i OK completed"
    assert idler.command("n", "NOOP") == [b"n OK completed"]  # nothing announced twice
    idler.close()
    other.close()


def test_idle_keepalive_and_bye_on_shutdown(tmp_path: Path) -> None:
    with imap_env(tmp_path, imap_idle_keepalive=1) as env:
        user = env.new_account()
        raw = _session(env, user)
        raw.send(b"i IDLE\r\n")
        assert raw.line() == b"+ idling"
        assert _idle_until(raw, b"Still here")[-1] == b"* OK Still here"
        env.stop_imap(env.imap, grace=5.0)
        assert _idle_until(raw, b"* BYE")[-1].startswith(b"* BYE")
        raw.close()


def _serve_imap(
    tmp_path: Path, env: ImapEnv, events_url: str, extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    environ = dict(os.environ)
    environ.update(
        {
            "MAILSTACK_DATA_DIR": str(tmp_path / "imap2"),
            "MAILSTACK_MAILSTORE_ADDR": env.mailstore.address,
            "MAILSTACK_EVENTS_URL": events_url,
            "MAILSTACK_IMAP_PORT": str(port),
            "MAILSTACK_IMAPS_PORT": str(free_port()),
            "MAILSTACK_ALLOW_PLAINTEXT_AUTH": "1",
            "MAILSTACK_IMAP_POLL_INTERVAL": "3600",
            **identity_env(env.settings.data_dir, "imap"),  # its own folder: the identity by settings
        }
    )
    environ.update(extra or {})
    log = open(tmp_path / "imap2.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve", "imap"], env=environ, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "imap2.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("second imap process did not start")


@pytest.mark.slow
def test_idle_across_two_imap_processes_with_redis_and_without(
    tmp_path: Path, restartable_redis_server: RedisServer
) -> None:
    redis = restartable_redis_server
    with imap_env(tmp_path, events_url=redis.url, imap_poll_interval=3600) as env:
        proc, port = _serve_imap(tmp_path, env, redis.url)
        try:
            user = env.new_account()
            idler = _session(env, user, port=port)  # on the second process
            writer = _session(env, user)  # on the first
            idler.send(b"i IDLE\r\n")
            assert idler.line() == b"+ idling"
            data = message("cross")
            writer.send(b"a APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
            writer.until("a")
            # both processes poll only hourly: this EXISTS came through Redis
            assert b"* 1 EXISTS" in _idle_until(idler, b"EXISTS")
            # Redis down: no push, but a session that polls still converges
            polling = env.start_imap(imap_poll_interval=1)
            poller = _session(env, user, port=int(polling.listeners[0][1].rsplit(":", 1)[1]))
            poller.send(b"p IDLE\r\n")
            assert poller.line() == b"+ idling"
            redis.stop()
            env.deliver(user, message("without redis"))
            assert b"* 2 EXISTS" in _idle_until(poller, b"EXISTS", timeout=20)
            for raw in (idler, poller):
                raw.send(b"DONE\r\n")
            idler.until("i")
            poller.until("p")
            for raw in (idler, writer, poller):
                raw.close()
        finally:
            proc.terminate()
            proc.wait(15)
