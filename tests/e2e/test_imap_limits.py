"""Hostile input and limits: over-long lines (BAD, session goes on), literals over the limit
(NO [TOOBIG], never buffered), connections per IP, pre-auth timeout, sessions per account,
autologout, the command rate, failed logins per IP, and the mailstore going away."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from mailstack.services.imap import telemetry

from tests.fixtures.imap_server import PASSWORD, RawImap, imap_env, message


def test_long_lines_and_big_literals_are_refused_and_the_session_goes_on(tmp_path: Path) -> None:
    with imap_env(tmp_path, imap_max_line=1024, max_message_size=4096) as env:
        raw = RawImap(env.port())
        raw.send(b"a1 NOOP " + b"x" * 5000 + b"\r\n")
        assert raw.line().startswith(b"a1 BAD")
        assert raw.command("a2", "NOOP") == [b"a2 OK completed"]
        raw.send(b"a3 LOGIN {100000}\r\n")  # synchronizing: refused before any octet is sent
        assert raw.line().startswith(b"a3 NO [TOOBIG]")
        raw.send(b"a4 LOGIN {100000+}\r\n" + b"y" * 100000 + b" pw\r\n")  # LITERAL+: dropped unread
        assert raw.line().startswith(b"a4 NO [TOOBIG]")
        assert raw.command("a5", "NOOP") == [b"a5 OK completed"]
        raw.close()


def test_connection_limits_and_preauth_timeout(tmp_path: Path) -> None:
    with imap_env(
        tmp_path, imap_max_connections_per_ip=2, imap_max_connections_per_user=1, imap_preauth_timeout=1
    ) as env:
        user = env.new_account()
        first, second = RawImap(env.port()), RawImap(env.port())
        third = RawImap(env.port())
        assert third.greeting.startswith(b"* BYE [UNAVAILABLE] too many connections")
        third.close()
        first.login(user)
        assert second.command("l", f'LOGIN {user} "{PASSWORD}"')[-1].startswith(b"l NO [LIMIT]")
        # the unauthenticated one is logged out after the pre-auth timeout
        assert second.line().startswith(b"* BYE autologout")
        first.close()
        second.close()


def _closed(raw: RawImap) -> bool:
    try:
        raw.line()
    except (ConnectionError, OSError):
        return True
    return False


def test_autologout_of_an_idle_authenticated_session(tmp_path: Path) -> None:
    # RFC 9051 §5.4 (the 30-minute floor is the default; tests use a short one)
    with imap_env(tmp_path, imap_autologout=1, imap_preauth_timeout=30) as env:
        user = env.new_account()
        raw = RawImap(env.port())
        raw.login(user)
        assert raw.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        assert raw.line() == b"* BYE autologout: idle for too long"
        assert _closed(raw)
        raw.close()


def test_preauth_timeout_closes_an_unauthenticated_connection(tmp_path: Path) -> None:
    with imap_env(tmp_path, imap_preauth_timeout=1) as env:
        raw = RawImap(env.port())
        assert raw.command("n", "NOOP") == [b"n OK completed"]  # a command does not extend it past login
        assert raw.line().startswith(b"* BYE autologout")
        assert _closed(raw)
        raw.close()


def test_command_rate_slows_a_fast_client_but_answers_everything_in_order(tmp_path: Path) -> None:
    # 1 command/s sustained, bursts of 5: eight pipelined commands, three of them wait
    with imap_env(tmp_path, imap_commands_per_second=1) as env:
        raw = RawImap(env.port())
        before = telemetry.commands_slowed
        raw.send(b"".join(b"n%d NOOP\r\n" % i for i in range(8)))
        answers = [raw.line() for _ in range(8)]
        assert answers == [b"n%d OK completed" % i for i in range(8)]
        assert telemetry.commands_slowed - before >= 2
        raw.close()


def test_failed_logins_from_one_ip_block_even_the_right_password_until_the_window_passes(tmp_path: Path) -> None:
    # one failure closes a connection; five from one IP (the shared per-IP budget) block the IP
    with imap_env(tmp_path, imap_auth_max_failures=1, auth_max_attempts_per_ip=5, auth_failure_window=2) as env:
        user = env.new_account()
        for i in range(5):
            raw = RawImap(env.port())
            assert raw.command("l", f'LOGIN {user} "wrong{i}"') == [
                b"l NO [AUTHENTICATIONFAILED] authentication failed"
            ]
            assert raw.line() == b"* BYE too many failed logins"
            raw.close()
        raw = RawImap(env.port())
        reply = raw.command("l", f'LOGIN {user} "{PASSWORD}"')[-1]
        assert reply == b"l NO [UNAVAILABLE] too many login attempts from this address, try again later"
        reply = raw.command("a", "AUTHENTICATE PLAIN " + _plain(user, PASSWORD))[-1]
        assert reply.startswith(b"a NO [UNAVAILABLE]")
        deadline = time.monotonic() + 10
        while True:  # the window slides: once the failures are older than it, logins work again
            time.sleep(0.5)
            reply = raw.command("l", f'LOGIN {user} "{PASSWORD}"')[-1]
            if reply.startswith(b"l OK") or time.monotonic() > deadline:
                break
        assert reply.startswith(b"l OK")
        raw.close()


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_mailstore_down_gives_unavailable_and_the_session_goes_on(tmp_path: Path) -> None:
    # ARCHITECTURE "Rules that keep mail safe": storage down -> NO [UNAVAILABLE], nothing half done
    with imap_env(tmp_path) as env:
        user = env.new_account()
        env.deliver(user, message("before the outage"))
        raw = RawImap(env.port())
        raw.login(user)
        assert raw.command("s1", "SELECT INBOX")[-1].startswith(b"s1 OK")
        env.stop_mailstore()
        assert raw.command("f1", "FETCH 1 BODY[]")[-1].startswith(b"f1 NO [UNAVAILABLE]")
        data = message("during the outage")
        raw.send(b"a1 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
        assert raw.until("a1")[-1].startswith(b"a1 NO [UNAVAILABLE]")
        assert raw.command("n1", "NOOP")[-1] == b"n1 OK completed"
        assert raw.command("s2", "SELECT INBOX")[-1].startswith(b"s2 NO [UNAVAILABLE]")
        assert raw.command("t1", "STATUS INBOX (MESSAGES)")[-1].startswith(b"t1 NO [UNAVAILABLE]")
        env.start_mailstore()
        deadline = time.monotonic() + 10
        while True:  # the channel reconnects within its (short) backoff
            lines = raw.command("s3", "SELECT INBOX")
            if lines[-1].startswith(b"s3 OK") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert lines[-1].startswith(b"s3 OK")
        assert b"* 1 EXISTS" in lines  # the failed APPEND left nothing behind
        lines = raw.command("f2", "FETCH 1 BODY[]")
        assert lines[-1] == b"f2 OK completed"
        assert b"before the outage" in b"\n".join(lines)
        raw.send(b"a2 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
        assert raw.until("a2")[-1].startswith(b"a2 OK")
        raw.close()
