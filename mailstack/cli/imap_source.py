"""`mailstack import imap --host H --user U ACCOUNT`: another server's IMAP account as an import
source (importing.py), for servers whose files cannot be read. TLS (implicit, or STARTTLS)
unless --security none says otherwise; the folders' UIDVALIDITY and UIDs come from SELECT and
UID FETCH (RFC 3501 §6.3.1, §6.4.8), flags, INTERNALDATE and RFC822.SIZE with them."""

from __future__ import annotations

import argparse
import imaplib
import re
import ssl
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from mailstack.message.mailbox_name import decode_mailbox_name, encode_mailbox_name
from mailstack.services.common.maildir_uids import format_uidl

from .admin import _read_password
from .importing import FolderReport, Importer, ImportStubs, SourceFolder, SourceMessage, emit_report
from .output import CommandError, Output

IMAP_TIMEOUT = 120.0
_LIST_LINE = re.compile(rb'\((?P<attrs>[^)]*)\) (?P<sep>"(?:[^"\\]|\\.)*"|NIL) ?(?P<name>.*)$', re.IGNORECASE)
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_QUOTED_SPECIALS = re.compile(r'(["\\])')


class SourceError(Exception):
    """The source server refused or broke; the message names the step."""


def _quoted(name: str) -> str:
    return '"' + _QUOTED_SPECIALS.sub(r"\\\1", encode_mailbox_name(name).decode("ascii")) + '"'


def _unquoted(raw: bytes) -> bytes:
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return raw


def _list_item(item: object) -> tuple[bytes, bytes | None] | None:
    """imaplib's LIST answer: a line, or (line, literal) when the name came as a literal."""
    if isinstance(item, bytes):
        return item, None
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, bytes) for x in item):
        return item[0], item[1]
    return None


def parse_list(data: Sequence[object]) -> list[tuple[str, set[str]]]:
    """LIST/LSUB answers as (mailbox name with "/" between levels, attributes)."""
    out = []
    for item in data:
        parts = _list_item(item)
        if parts is None:
            continue
        line, literal = parts
        match = _LIST_LINE.match(line)
        if match is None:
            continue
        raw = literal if literal is not None else _unquoted(match["name"].strip())
        sep = _unquoted(match["sep"]).decode("ascii", "replace") if match["sep"].upper() != b"NIL" else ""
        try:
            name = decode_mailbox_name(raw)
        except ValueError:
            name = raw.decode("utf-8", "replace")  # a server writing UTF-8 names
        if sep and sep != "/":
            name = name.replace(sep, "/")
        attrs = {a.lower() for a in match["attrs"].decode("ascii", "replace").split()}
        out.append((name, attrs))
    return out


def parse_internaldate(text: str) -> tuple[int, int]:
    """RFC 3501 date-time ("13-Sep-2020 12:26:40 +0000") as (unix seconds, minutes east of UTC)."""
    when = datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
    offset = when.utcoffset()
    return int(when.timestamp()), int(offset.total_seconds() // 60) if offset else 0


def _check(answer: tuple[str, Any], what: str) -> list[Any]:
    status, data = answer
    if status != "OK":
        raise SourceError(f"{what}: {status} {data!r}")
    return list(data)


class ImapSource:
    def __init__(self, conn: imaplib.IMAP4, uidl_format: str) -> None:
        self.conn = conn
        self.uidl_format = uidl_format

    def folders(self) -> list[str]:
        data = _check(self.conn.list('""', "*"), "LIST")
        names = [name for name, attrs in parse_list(data) if not attrs & {"\\noselect", "\\nonexistent"}]
        return sorted(names, key=lambda n: (n != "INBOX", n))

    def subscriptions(self) -> list[str]:
        data = _check(self.conn.lsub('""', "*"), "LSUB")
        return sorted({name for name, _ in parse_list(data)})

    def _number(self, key: str) -> int:
        _, data = self.conn.response(key)
        value = data[0] if data and data[0] is not None else b"0"
        return int(value) if isinstance(value, bytes) and value.isdigit() else 0

    def folder(self, name: str) -> SourceFolder:
        _check(self.conn.select(_quoted(name), readonly=True), f"SELECT {name}")
        uidvalidity, uidnext = self._number("UIDVALIDITY"), self._number("UIDNEXT")
        data = _check(self.conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE)"), f"FETCH {name}")
        messages = [m for m in (self._message(item, uidvalidity) for item in data) if m is not None]
        note = "" if uidvalidity else "the server gave no UIDVALIDITY: new UIDs"
        return SourceFolder(name, uidvalidity, uidnext, messages, note)

    def _message(self, item: object, uidvalidity: int) -> SourceMessage | None:
        line = item[0] if isinstance(item, tuple) else item
        if not isinstance(line, bytes):
            return None
        uid, flags, date, size = _UID.search(line), _FLAGS.search(line), _DATE.search(line), _SIZE.search(line)
        if uid is None:
            return None
        number = int(uid[1])
        when, offset = parse_internaldate(date[1].decode()) if date else (0, 0)
        uidl = format_uidl(self.uidl_format, number, uidvalidity) if self.uidl_format and uidvalidity else ""
        return SourceMessage(
            uid=number,
            flags=tuple(flags[1].decode("utf-8", "replace").split()) if flags else (),
            internal_date=when,
            tz_offset=offset,
            size=int(size[1]) if size else 0,
            pop3_uidl=uidl,
            name=f"UID {number}",
            read=lambda: self._section(number, "BODY.PEEK[]"),
            read_header=lambda: self._section(number, "BODY.PEEK[HEADER]"),
        )

    def _section(self, uid: int, item: str) -> bytes:
        try:
            data = _check(self.conn.uid("FETCH", str(uid), f"({item})"), f"FETCH UID {uid}")
        except (imaplib.IMAP4.error, SourceError) as err:
            raise OSError(str(err)) from None
        for part in data:
            if isinstance(part, tuple) and isinstance(part[1], bytes):
                return part[1]
        raise OSError(f"UID {uid}: the server sent no {item}")


def connect(args: argparse.Namespace, password: str) -> imaplib.IMAP4:
    context = ssl.create_default_context(cafile=args.cafile)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if args.security == "tls":
        conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(args.host, args.port or 993, ssl_context=context, timeout=IMAP_TIMEOUT)
    else:
        conn = imaplib.IMAP4(args.host, args.port or 143, timeout=IMAP_TIMEOUT)
        if args.security == "starttls":
            conn.starttls(context)
    conn.login(args.user, password)
    return conn


def _folders(source: ImapSource, only: list[str]) -> Iterator[str]:
    names = source.folders()
    yield from (n for n in names if not only or n in only)


def _sync(importer: Importer, source: ImapSource, name: str) -> FolderReport:
    try:
        folder = source.folder(name)
    except (SourceError, imaplib.IMAP4.error) as err:
        return FolderReport(name, failed=[f"source: {err}"])
    return importer.sync(folder)


def cmd_import_imap(stubs: ImportStubs, args: argparse.Namespace, out: Output) -> None:
    """Bring an account in line with another server's IMAP account (see importing.py)."""
    password = _read_password(args)
    try:
        conn = connect(args, password)
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as err:
        raise CommandError(f"{args.host}: {err}") from None
    try:
        source = ImapSource(conn, args.pop3_uidl_format)
        importer = Importer(stubs, args.account, args.delete)
        reports = [_sync(importer, source, name) for name in _folders(source, args.folder)]
        emit_report(out, reports, importer.subscribe(source.subscriptions()))
    except (OSError, imaplib.IMAP4.error, SourceError) as err:
        raise CommandError(f"{args.host}: {err}") from None
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
