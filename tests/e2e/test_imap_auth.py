"""Connection setup and authentication: greeting, CAPABILITY, STARTTLS, LOGIN, AUTHENTICATE PLAIN
(SASL-IR and continuation), IMAPS, failure limits (RFC 9051 §6.1-6.2, RFC 4959, RFC 8314)."""

from __future__ import annotations

import base64
import imaplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.services.common.tls import client_ssl_context

from tests.fixtures.imap_server import PASSWORD, ImapEnv, RawImap, imap_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("imap-auth"), allow_plaintext_auth=False) as e:
        yield e


def test_greeting_carries_capabilities_and_refuses_login_before_tls(env: ImapEnv) -> None:
    raw = RawImap(env.port())
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"STARTTLS" in raw.greeting and b"LOGINDISABLED" in raw.greeting
    assert b"AUTH=PLAIN" not in raw.greeting
    user = env.new_account()
    reply = raw.command("a1", f'LOGIN {user} "{PASSWORD}"')
    assert reply[-1].startswith(b"a1 NO [PRIVACYREQUIRED]")
    reply = raw.command("a2", "AUTHENTICATE PLAIN " + base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode())
    assert reply[-1].startswith(b"a2 NO [PRIVACYREQUIRED]")
    assert raw.command("a3", "SELECT INBOX")[-1].startswith(b"a3 BAD")  # not in this state
    raw.close()


def test_starttls_then_login_with_imaplib(env: ImapEnv) -> None:
    user = env.new_account()
    client = imaplib.IMAP4("localhost", env.port())
    client.starttls(client_ssl_context(env.cert))
    assert "AUTH=PLAIN" in client.capabilities and "STARTTLS" not in client.capabilities
    assert client.login(user, PASSWORD)[0] == "OK"
    _, caps = client.capability()
    assert b"IDLE" in caps[0] and b"AUTH=PLAIN" not in caps[0]
    assert client.logout()[0] == "BYE"


def test_starttls_drops_a_command_pipelined_in_plaintext(env: ImapEnv) -> None:
    """RFC 9051 §6.2.1 / RFC 7817: `STARTTLS\r\nCAPABILITY\r\n` in one packet: the CAPABILITY sent
    in plaintext is never answered, neither before nor after the handshake (command injection)."""
    raw = RawImap(env.port())
    raw.send(b"S STARTTLS\r\nI CAPABILITY\r\n")
    assert raw.until("S")[-1].startswith(b"S OK")
    assert raw.buffer == b""
    raw.sock = client_ssl_context(env.cert).wrap_socket(raw.sock, server_hostname="localhost")
    lines = raw.command("N", "NOOP")
    assert lines == [lines[-1]] and lines[-1].startswith(b"N OK"), lines  # no CAPABILITY, no "I OK"
    raw.sock.close()


def test_implicit_tls_and_authenticate_plain(env: ImapEnv) -> None:
    user = env.new_account()
    client = imaplib.IMAP4_SSL("localhost", env.port(tls=True), ssl_context=client_ssl_context(env.cert))
    assert "STARTTLS" not in client.capabilities
    typ, _ = client.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
    assert typ == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def _tls_raw(env: ImapEnv) -> RawImap:
    return RawImap(env.port(tls=True), tls=client_ssl_context(env.cert))


def test_sasl_ir_continuation_cancel_and_failures(env: ImapEnv) -> None:
    user = env.new_account()
    raw = _tls_raw(env)
    # SASL-IR: the initial response on the command line (RFC 4959)
    good = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
    # without initial response: an empty continuation, then the response line
    raw.send(b"c1 AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ "
    raw.send(b"*\r\n")
    assert raw.until("c1")[-1].startswith(b"c1 BAD")  # cancelled (RFC 9051 §6.2.2)
    bad = base64.b64encode(f"\0{user}\0wrong".encode())
    assert raw.command("c2", b"AUTHENTICATE PLAIN " + bad)[-1].startswith(b"c2 NO [AUTHENTICATIONFAILED]")
    raw.send(b"c3 AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ "
    raw.send(good + b"\r\n")
    assert raw.until("c3")[-1].startswith(b"c3 OK [CAPABILITY IMAP4rev1")
    assert raw.command("c4", "AUTHENTICATE PLAIN " + good.decode())[-1].startswith(b"c4 BAD")  # already in
    raw.close()


def test_too_many_failures_close_the_connection(env: ImapEnv) -> None:
    user = env.new_account()
    raw = _tls_raw(env)
    for i in range(env.settings.imap_auth_max_failures - 1):
        assert raw.command(f"f{i}", f'LOGIN {user} "nope"')[-1].startswith(f"f{i} NO [AUTHENTICATIONFAILED]".encode())
    lines = raw.command("last", f'LOGIN {user} "nope"')
    assert lines[-1].startswith(b"last NO")
    assert raw.line().startswith(b"* BYE")
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        raw.line()
    raw.close()


def test_unknown_and_malformed_commands_get_bad_and_the_session_goes_on(env: ImapEnv) -> None:
    raw = _tls_raw(env)
    assert raw.command("x1", "FROBNICATE")[-1].startswith(b"x1 BAD")
    assert raw.command("x2", 'LOGIN "unterminated')[-1].startswith(b"x2 BAD")
    raw.send(b"\r\n")  # an empty line is ignored
    assert raw.command("x3", "NOOP")[-1] == b"x3 OK completed"
    assert raw.command("x4", "CAPABILITY")[0].startswith(b"* CAPABILITY IMAP4rev1")
    lines = raw.command("x5", "LOGOUT")
    assert lines[0].startswith(b"* BYE") and lines[-1].startswith(b"x5 OK")
    raw.close()


def test_plaintext_login_when_allowed(tmp_path: Path) -> None:
    with imap_env(tmp_path, allow_plaintext_auth=True) as env:
        user = env.new_account()
        client = imaplib.IMAP4("127.0.0.1", env.port())
        assert "AUTH=PLAIN" in client.capabilities and "LOGINDISABLED" not in client.capabilities
        assert client.login(user, PASSWORD)[0] == "OK"
        client.logout()
