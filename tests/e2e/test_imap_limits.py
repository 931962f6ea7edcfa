"""Hostile input and limits: over-long lines (BAD, session goes on), literals over the limit
(NO [TOOBIG], never buffered), connections per IP, pre-auth timeout, sessions per account."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.imap_server import PASSWORD, RawImap, imap_env


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
