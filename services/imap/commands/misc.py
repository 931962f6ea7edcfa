"""CAPABILITY, NOOP, LOGOUT, CHECK, ID, NAMESPACE, ENABLE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import Command, Enable, Id
from ..protocol.encoder import tagged, untagged, untagged_status
from ..replies import Reply, no
from ..session import State

if TYPE_CHECKING:
    from ..session import Session

# Each is advertised because it works end to end (tests/e2e/test_imap_*.py).
EXTENSIONS = (
    "LITERAL+",
    "SASL-IR",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UIDPLUS",
    "MOVE",
    "UNSELECT",
    "CHILDREN",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
    "SEARCHRES",
    "BINARY",
    "UTF8=ACCEPT",
    "QUOTA",
    "QUOTA=RES-STORAGE",
    "QUOTA=RES-MESSAGE",
    "MULTIAPPEND",
    "STATUS=SIZE",  # RFC 8438
    "OBJECTID",  # RFC 8474 (THREADID is NIL: no threads are kept)
    "SAVEDATE",  # RFC 8514
    "WITHIN",  # RFC 5032
    "PREVIEW",  # RFC 8970
    "COMPRESS=DEFLATE",  # RFC 4978
    "CATENATE",  # RFC 4469
    "NOTIFY",
    "SORT",
    "SORT=DISPLAY",
    "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES",
    "ESORT",
    "CONTEXT=SEARCH",
    "CONTEXT=SORT",
)


def capabilities(session: Session) -> str:
    caps = ["IMAP4rev1", "IMAP4rev2"]  # RFC 9051 §1: a server may offer both
    if session.state == State.NOT_AUTHENTICATED:
        if not session.conn.tls and session.conn.can_start_tls:
            caps.append("STARTTLS")
        if session.conn.tls or session.settings.allow_plaintext_auth:
            caps.append("AUTH=PLAIN")
        else:
            caps.append("LOGINDISABLED")  # RFC 9051 §6.2.3
    caps += EXTENSIONS
    caps.append(f"APPENDLIMIT={session.settings.max_message_size}")
    return " ".join(caps)


async def capability(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.1.1
    session.untagged(untagged("CAPABILITY " + capabilities(session)))
    return None


async def noop(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.1.2 (the session sends pending updates after every command)
    return None


async def check(session: Session, command: Command) -> Reply | None:
    # Command: RFC 3501 §6.4.1 (every change is durable already: same as NOOP)
    return None


async def logout(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9051 §6.1.3
    session.untagged(untagged_status("BYE", "logging out"))
    session.state = State.LOGOUT
    return None


async def id_command(session: Session, command: Command) -> Reply | None:
    # Command: RFC 2971 §3.1
    assert isinstance(command.args, Id)
    session.untagged(untagged(b'ID ("name" "mailstack" "vendor" "mailstack")'))
    return None


async def namespace(session: Session, command: Command) -> Reply | None:
    # Command: RFC 2342 §5: one personal namespace, no other users' or shared ones
    session.untagged(untagged(b'NAMESPACE (("" "/")) NIL NIL'))
    return None


async def compress(session: Session, command: Command) -> Reply | None:
    # Command: RFC 4978 §3 (DEFLATE only: the parser refuses others with BAD)
    if session.conn.compressing:
        raise no("DEFLATE is active already", "COMPRESSIONACTIVE")
    session.untagged(tagged(command.tag, "OK", "DEFLATE active"))
    await session.flush()  # the OK goes out uncompressed; every octet after it is compressed
    session.conn.start_compression()
    return Reply("", "")  # already answered


async def enable(session: Session, command: Command) -> Reply | None:
    # Command: RFC 5161 §3.1; CONDSTORE and QRESYNC per RFC 7162 §3.1, §3.2.3; UTF8=ACCEPT RFC 6855 §3
    assert isinstance(command.args, Enable)
    enabled: list[bytes] = []
    for name in command.args.capabilities:
        if name.upper() == "CONDSTORE" and not session.condstore:
            session.enable_condstore()
            enabled.append(b"CONDSTORE")
        elif name.upper() == "QRESYNC" and not session.qresync:
            session.enable_condstore()  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE
            session.qresync = True
            enabled.append(b"QRESYNC")
        elif name.upper() == "IMAP4REV2" and not session.rev2:
            session.rev2 = True  # RFC 9051 §6.3.1: rev2 rules from now on (the open view keeps its own)
            # RFC 9051 §5.1, §9 (QUOTED-CHAR, mailbox): UTF-8 mailbox names and strings, as UTF8=ACCEPT
            session.utf8 = session.conn.receiver.utf8 = True
            enabled.append(b"IMAP4rev2")
        elif name.upper() == "UTF8=ACCEPT" and not session.utf8:
            # RFC 6855 §3: mailbox names as UTF-8 both ways, UTF-8 in quoted strings, UTF8 APPEND
            session.utf8 = session.conn.receiver.utf8 = True
            enabled.append(b"UTF8=ACCEPT")
    session.untagged(untagged(b" ".join([b"ENABLED", *enabled])))
    return None
