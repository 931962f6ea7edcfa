"""A synchronising literal is acknowledged on arrival (issue 16: APPEND as a migration target).

imapsync and Python's imaplib write an APPEND literal and its closing CRLF in two writes without
TCP_NODELAY, so Nagle's algorithm holds the CRLF until the server's TCP stack acknowledges the
literal; Linux delays that ACK up to 40 ms after the server's "+" went out, and every serial
APPEND paid it (72 ms each against Dovecot's 7 ms). The client side shows it without timing the
server's work: the bytes of the literal still unacknowledged in the client's send queue (Linux
TIOCOUTQ) must drop to zero well before a delayed ACK would fire."""

from __future__ import annotations

import fcntl
import socket
import statistics
import struct
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.migration_support import PASSWORD, MailstackServer

ACCOUNT = "acked@example.test"
DELAYED_ACK_MIN = 0.040  # Linux's TCP_DELACK_MIN

pytestmark = pytest.mark.slow


@pytest.fixture
def mailstack(tmp_path: Path) -> Iterator[MailstackServer]:
    server = MailstackServer(tmp_path / "mailstack")
    server.start()
    try:
        added = server.cli("user", "add", ACCOUNT, "--password-stdin", stdin=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        yield server
    finally:
        server.stop()


def unacknowledged(sock: socket.socket) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def ack_delay(sock: socket.socket, lines: object, tag: str, literal: bytes) -> float:
    sock.sendall(f"{tag} APPEND INBOX {{{len(literal)}}}\r\n".encode())
    assert lines.readline().startswith(b"+")  # type: ignore[attr-defined]
    sock.sendall(literal)
    start = time.perf_counter()
    while unacknowledged(sock) and time.perf_counter() - start < 1.0:
        time.sleep(0.0005)
    delay = time.perf_counter() - start
    sock.sendall(b"\r\n")
    while not (line := lines.readline()).startswith(tag.encode()):  # type: ignore[attr-defined]
        assert line, "connection closed"
    assert line.startswith(f"{tag} OK".encode()), line
    return delay


def test_a_literal_is_acknowledged_before_a_delayed_ack_would_fire(mailstack: MailstackServer) -> None:
    sock = socket.create_connection(("127.0.0.1", mailstack.imap_port), timeout=30)  # Nagle on, as imaplib
    lines = sock.makefile("rb")
    try:
        assert lines.readline().startswith(b"* OK")
        sock.sendall(f"a LOGIN {ACCOUNT} {PASSWORD}\r\n".encode())
        assert lines.readline().startswith(b"a OK")
        literal = b"Subject: small\r\n\r\n" + b"x" * 900  # below a segment: the case Linux delays
        delays = [ack_delay(sock, lines, f"t{i}", literal) for i in range(12)]
    finally:
        lines.close()
        sock.close()
    assert statistics.median(delays) < DELAYED_ACK_MIN / 2, [round(d * 1000, 1) for d in delays]
