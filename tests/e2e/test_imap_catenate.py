"""CATENATE (RFC 4469 §5) limits the scripts cannot set: a catenated message over the size limit is
NO [TOOBIG] and stores nothing, even when each part alone is small."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.imap_server import RawImap, imap_env


def test_a_catenated_message_over_the_limit_is_toobig(tmp_path: Path) -> None:
    with imap_env(tmp_path, max_message_size=4096) as env:
        user = env.new_account()
        env.append(user, "INBOX", b"Subject: part\r\n\r\n" + b"x" * 1500 + b"\r\n")
        raw = RawImap(env.port())
        raw.login(user)
        url = '"/INBOX/;UID=1"'
        assert raw.command("a", f"APPEND INBOX CATENATE (URL {url} URL {url})")[-1].startswith(b"a OK")
        lines = raw.command("b", f"APPEND INBOX CATENATE (URL {url} URL {url} URL {url})")
        assert lines[-1].startswith(b"b NO [TOOBIG]")
        assert raw.command("c", "STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 2)"
        raw.close()
