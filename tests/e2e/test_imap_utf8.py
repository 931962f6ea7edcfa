"""UTF8=ACCEPT (RFC 6855) over a real socket: after ENABLE, mailbox names travel as UTF-8 both ways,
ENVELOPE strings may hold UTF-8, and APPEND takes UTF8 (literal8) data; a client that did not
enable it keeps modified UTF-7 and cannot send UTF8 data."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.imap_server import ImapEnv, RawImap, imap_env

NAME = "Été/日本"
UTF7 = b"&AMk-t&AOk-/&ZeVnLA-"
MESSAGE = "From: Zoë <zoë@example.test>\r\nSubject: Grüße\r\nTo: a@example.test\r\n\r\nhello\r\n".encode()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("imap-utf8")) as e:
        yield e


def client(env: ImapEnv, user: str) -> RawImap:
    raw = RawImap(env.port())
    raw.login(user)
    return raw


def append_utf8(raw: RawImap, tag: str, mailbox: bytes, data: bytes) -> list[bytes]:
    raw.send(tag.encode() + b" APPEND " + mailbox + b" UTF8 (~{%d}\r\n" % len(data))
    first = raw.line()
    if not first.startswith(b"+"):
        return [first]
    raw.send(data + b")\r\n")
    return raw.until(tag)


def test_names_and_strings_in_utf8_once_enabled(env: ImapEnv) -> None:
    user = env.new_account()
    old = client(env, user)
    assert b"UTF8=ACCEPT" in b"".join(old.command("c", "CAPABILITY"))
    assert old.command("a", b'CREATE "' + UTF7 + b'"')[-1].startswith(b"a OK")
    assert any(UTF7 in line for line in old.command("l", 'LIST "" "*"')), "modified UTF-7 without ENABLE"
    assert append_utf8(old, "u", b"INBOX", MESSAGE)[-1].startswith(b"u BAD"), "UTF8 data needs ENABLE"

    new = client(env, user)
    assert new.command("e", "ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT"
    listed = new.command("l", 'LIST "" "*"')
    assert any(f'"{NAME}"'.encode() in line for line in listed), listed
    quoted = f'"{NAME}"'.encode()
    assert new.command("s", b"STATUS " + quoted + b" (MESSAGES)")[0] == b"* STATUS " + quoted + b" (MESSAGES 0)"
    assert append_utf8(new, "a", quoted, MESSAGE)[-1].startswith(b"a OK [APPENDUID")
    assert new.command("x", b"SELECT " + quoted)[-1].startswith(b"x OK")
    envelope = b"".join(new.command("f", "FETCH 1 (ENVELOPE)"))
    assert '"Grüße"'.encode() in envelope and '"Zoë"'.encode() in envelope, envelope
    # the client that did not enable it still gets no raw UTF-8 in quoted strings
    old.command("y", b'SELECT "' + UTF7 + b'"')
    plain = b"".join(old.command("g", "FETCH 1 (ENVELOPE)"))
    assert '"Grüße"'.encode() not in plain and "Grüße".encode() in plain, "a literal, not a quoted string"
    old.close()
    new.close()
