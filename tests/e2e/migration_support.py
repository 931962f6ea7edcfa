"""What the migration tests (issue 16) share: mailstack as one process (mailstore, IMAP, POP3), a
source Dovecot populated as users fill theirs, and the comparison of the two over IMAP and POP3
(what a client sees: UIDVALIDITY, UIDNEXT, UIDs, bodies, flags, keywords, INTERNALDATE,
subscriptions, POP3 UIDL and LIST)."""

from __future__ import annotations

import base64
import email.utils
import imaplib
import os
import poplib
import random
import re
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mailstack.message.mailbox_name import encode_mailbox_name
from mailstack.services.common.config import env_name

from mailstack.cli.imap_source import parse_internaldate, parse_list
from tests.fixtures.dovecot_server import DovecotServer
from tests.fixtures.mailstore import health_check
from tests.fixtures.ports import free_port

PASSWORD = "pw-migrate-1"
# Several levels, non-ASCII names (modified UTF-7 on disk), keywords Dovecot numbers per folder.
FOLDERS = ["INBOX", "Sent", "Archiv\u00f6/2023", "Projekte/\u00c4rger \u65e5\u672c", "Work"]
KEYWORDS = ["$Forwarded", "$Label1", "Work", "Projekt-X", "$Junk"]
SYSTEM_FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"]
SUBSCRIBED = ["INBOX", "Sent", "Archiv\u00f6/2023"]


class MailstackServer:
    """`mailstack serve mailstore imap pop3` in its own process, as an operator runs it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.address = f"127.0.0.1:{free_port()}"
        self.send_address = f"127.0.0.1:{free_port()}"
        self.imap_port, self.pop3_port = free_port(), free_port()
        self.env = {
            **os.environ,
            env_name("data_dir"): str(data_dir),
            env_name("mailstore_listen"): self.address,
            env_name("mailstore_addr"): self.address,
            env_name("send_listen"): self.send_address,
            env_name("imap_port"): str(self.imap_port),
            env_name("imaps_port"): str(free_port()),
            env_name("pop3_port"): str(self.pop3_port),
            env_name("pop3s_port"): str(free_port()),
            env_name("allow_plaintext_auth"): "true",
            env_name("imap_auth_failure_delay_ms"): "0",
            env_name("pop3_auth_failure_delay_ms"): "0",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "serve.log"

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailstack", "serve", "mailstore", "imap", "pop3"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not (health_check(self.send_address) and _open(self.imap_port) and _open(self.pop3_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailstack did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The CLI as an operator runs it. Exit code 2 (not reachable: the CLI connects within 5 s,
        which a loaded test machine can miss) is retried; nothing was sent then."""
        for _ in range(3):
            done = subprocess.run(
                [sys.executable, "-m", "mailstack", "--mailstore", self.address, *args],
                capture_output=True, text=True, timeout=900, env=self.env, input=stdin,
            )  # fmt: skip
            if done.returncode != 2:
                break
        return done


def _open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def quoted(name: str) -> str:
    return '"' + encode_mailbox_name(name).decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_login(port: int, user: str, password: str = PASSWORD) -> imaplib.IMAP4:
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=60)
    conn.login(user, password)
    return conn


# ---------------------------------------------------------------- varied messages


def _body_text(rng: random.Random, lines: int) -> str:
    words = ["mail", "stack", "migration", "Gr\u00fc\u00dfe", "caf\u00e9", "\u65e5\u672c", "line", "data", "x" * 70]
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(lines))


def make_message(rng: random.Random, n: int, folder: str) -> bytes:
    """One of several shapes, LF line ends (as Dovecot stores them; the wire form is CRLF)."""
    date = email.utils.formatdate(1_600_000_000 + n * 3571, localtime=False)
    headers = [f"From: Sender {n} <s{n}@remote.test>", "To: user@example.test", f"Date: {date}"]
    if n % 17 != 5:  # some have no Message-ID at all
        headers.append(f"Message-ID: <m{n}.{folder.encode('utf-8').hex()[:8]}@remote.test>")
    shape = n % 5
    if shape == 0:  # 8-bit UTF-8 text
        headers += [f"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_{n}?=", "MIME-Version: 1.0",
                    "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]  # fmt: skip
        body = _body_text(rng, rng.randint(1, 30))
    elif shape == 1:  # multipart with a binary attachment (base64)
        blob = rng.randbytes(rng.randint(100, 40_000))
        encoded = base64.encodebytes(blob).decode()
        headers += [f"Subject: attachment {n}", "MIME-Version: 1.0",
                    'Content-Type: multipart/mixed; boundary="b-' + str(n) + '"']  # fmt: skip
        body = (f"--b-{n}\nContent-Type: text/plain\n\nsee attached\n--b-{n}\nContent-Type: application/octet-stream\n"
                f"Content-Transfer-Encoding: base64\n\n{encoded}--b-{n}--\n")  # fmt: skip
    elif shape == 2:  # a long folded header and a line starting with a dot and "From "
        headers += [f"Subject: folded {n}", "References: " + "\n\t".join(f"<r{i}@x>" for i in range(20))]
        body = ".a dot line\nFrom the start\n" + _body_text(rng, 5)
    elif shape == 3:  # big
        headers += [f"Subject: big {n}"]
        body = _body_text(rng, rng.randint(200, 1500))
    else:  # tiny, no final line end
        headers += [f"Subject: tiny {n}"]
        body = "no final newline"
    return ("\n".join(headers) + "\n\n" + body).encode("utf-8")


def random_flags(rng: random.Random) -> list[str]:
    flags = [f for f in SYSTEM_FLAGS if rng.random() < 0.3]
    return flags + [k for k in KEYWORDS if rng.random() < 0.2]


def imap_date(n: int) -> str:
    return imaplib.Time2Internaldate(1_500_000_000 + n * 7919)


def populate(dovecot: DovecotServer, user: str, count: int, seed: int = 16) -> None:
    """`count` messages over the folders: most by IMAP APPEND (flags, keywords, dates), INBOX also
    by LMTP; the subscriptions; a few expunged so that UIDs have holes."""
    rng = random.Random(seed)
    conn = imap_login(dovecot.port_imap, user)
    try:
        for folder in FOLDERS[1:]:
            conn.create(quoted(folder))
        for folder in SUBSCRIBED:
            conn.subscribe(quoted(folder))
        lmtp = count // 5
        for n in range(count - lmtp):
            folder = FOLDERS[n % len(FOLDERS)]
            flags = "(" + " ".join(random_flags(rng)) + ")"
            status, answer = conn.append(quoted(folder), flags, imap_date(n), make_message(rng, n, folder))
            assert status == "OK", answer
        conn.select("INBOX")
        conn.uid("STORE", "3,9,10", "+FLAGS.SILENT", "(\\Deleted)")
        assert conn.uid("EXPUNGE", "3,9,10")[0] == "OK"  # UIDPLUS: others keep their \Deleted
    finally:
        conn.logout()
    deliver_lmtp(dovecot, user, [make_message(rng, 10_000 + i, "INBOX") for i in range(lmtp)])


def deliver_lmtp(dovecot: DovecotServer, user: str, messages: list[bytes]) -> None:
    with smtplib.LMTP("127.0.0.1", dovecot.port_lmtp) as lmtp:
        for data in messages:
            lmtp.sendmail("sender@remote.test", [user], data)


# ---------------------------------------------------------------- what a client sees

_ITEM = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\) INTERNALDATE \"([^\"]+)\" RFC822\.SIZE (\d+)")


@dataclass(frozen=True)
class FolderView:
    uidvalidity: int
    uidnext: int
    messages: dict[int, tuple[frozenset[str], tuple[int, int], int, bytes]]  # uid -> flags, date, size, body


def _number(conn: imaplib.IMAP4, key: str) -> int:
    _, data = conn.response(key)
    return int(data[0]) if data and data[0] else 0


def folder_view(conn: imaplib.IMAP4, folder: str) -> FolderView:
    status, answer = conn.select(quoted(folder), readonly=True)
    assert status == "OK", (folder, answer)
    uidvalidity, uidnext = _number(conn, "UIDVALIDITY"), _number(conn, "UIDNEXT")
    status, data = conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    assert status == "OK", data
    messages = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        match = _ITEM.search(item[0])
        assert match is not None, item[0]
        flags = frozenset(match[2].decode().split()) - {"\\Recent"}
        # RFC 3501 date-day-fixed: " 7-Dec" and "07-Dec" are the same day; compared as instants and zones
        messages[int(match[1])] = (flags, parse_internaldate(match[3].decode()), int(match[4]), item[1])
    return FolderView(uidvalidity, uidnext, messages)


def subscriptions(conn: imaplib.IMAP4) -> set[str]:
    status, data = conn.lsub('""', "*")
    assert status == "OK"
    return {name for name, _ in parse_list(data)}


def pop3_view(port: int, user: str) -> tuple[list[bytes], list[bytes]]:
    """(UIDL lines, LIST lines) of the maildrop, as a "leave mail on server" client keeps them."""
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        pop.user(user)
        pop.pass_(PASSWORD)
        return pop.uidl()[1], pop.list()[1]
    finally:
        pop.quit()


def assert_same(dovecot: DovecotServer, source_user: str, mailstack: MailstackServer, account: str) -> int:
    """Every Dovecot folder as mailstack shows it; the messages compared."""
    source, target = imap_login(dovecot.port_imap, source_user), imap_login(mailstack.imap_port, account)
    compared = 0
    try:
        status, listed = source.list('""', "*")
        assert status == "OK"
        for folder, attrs in parse_list(listed):
            if attrs & {"\\noselect", "\\nonexistent"}:  # parents only
                continue
            want, got = folder_view(source, folder), folder_view(target, folder)
            assert (got.uidvalidity, got.uidnext) == (want.uidvalidity, want.uidnext), folder
            assert sorted(got.messages) == sorted(want.messages), folder
            for uid, (flags, date, size, body) in want.messages.items():
                have = got.messages[uid]
                assert have[:3] == (flags, date, size), (folder, uid, have[:3], (flags, date, size))
                assert have[3] == body, (folder, uid, "body differs")
                assert body.count(b"\n") == body.count(b"\r\n"), "CRLF on the wire"
            compared += len(want.messages)
        assert subscriptions(target) >= subscriptions(source)
    finally:
        source.logout()
        target.logout()
    assert pop3_view(mailstack.pop3_port, account) == pop3_view(dovecot.port_pop3, source_user)
    return compared
