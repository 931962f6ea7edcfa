"""`mailstack import maildir PATH ACCOUNT`: a Dovecot or Courier Maildir++ tree as an import
source (importing.py), with the UIDs, UIDVALIDITY, UIDNEXT and POP3 UIDLs of its UID lists."""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path

from mailstack.services.common.maildir import MaildirFolder, MaildirMessage, read_maildir, read_subscriptions
from mailstack.services.common.maildir_uids import format_uidl

from .importing import Importer, ImportStubs, SourceFolder, SourceMessage, emit_report
from .output import CommandError, Output

HEADER_READ = 64 * 1024  # enough of a file to hold its header (matching reads no more)
_VSIZE = re.compile(r",W=(\d+)")  # Dovecot's file names carry the size with CRLF line ends


def vsize_of(filename: str) -> int:
    """The size with CRLF line ends a Dovecot file name states (",W=1234"); 0 when it does not."""
    found = _VSIZE.search(filename.partition(":")[0])
    return int(found[1]) if found else 0


def _read_header(path: Path) -> bytes:
    with path.open("rb") as f:
        head = f.read(HEADER_READ)
    for end in (b"\r\n\r\n", b"\n\n"):
        if end in head:
            return head[: head.index(end) + len(end)]
    return head


def _message(folder: MaildirFolder, message: MaildirMessage, uidl_format: str) -> SourceMessage:
    kept, uids = message.kept, folder.uids
    uid = kept.uid if kept is not None else 0
    uidl = ""
    if kept is not None and uids is not None:
        uidl = kept.pop3_uidl or format_uidl(uidl_format, uid, uids.uidvalidity, message.path.name, kept.guid)
    return SourceMessage(
        uid=uid,
        flags=message.flags,
        internal_date=message.mtime,
        tz_offset=0,  # an mtime has no zone: Dovecot shows it as +0000 too
        size=(kept.vsize if kept is not None else None) or vsize_of(message.path.name),
        pop3_uidl=uidl,
        name=message.path.name,
        read=message.path.read_bytes,
        read_header=functools.partial(_read_header, message.path),
    )


def source_folder(folder: MaildirFolder, uidl_format: str) -> SourceFolder:
    uids = folder.uids
    note = f"UID list unreadable ({folder.uid_problem}): new UIDs" if folder.uid_problem else ""
    return SourceFolder(
        mailbox=folder.mailbox,
        uidvalidity=uids.uidvalidity if uids is not None else 0,
        uidnext=uids.uidnext if uids is not None else 0,
        messages=[_message(folder, m, uidl_format) for m in folder.messages],
        note=note,
    )


def cmd_import_maildir(stubs: ImportStubs, args: argparse.Namespace, out: Output) -> None:
    """Bring an account in line with a Maildir++ tree, folder by folder (see importing.py); a
    second pass stores only what is new, sets changed flags, and with --delete expunges what the
    tree no longer has."""
    root = Path(args.path)
    try:
        folders = read_maildir(root)
        subscriptions = read_subscriptions(root)
    except OSError as err:
        raise CommandError(str(err)) from None
    importer = Importer(stubs, args.account, args.delete)
    reports = [importer.sync(source_folder(folder, args.pop3_uidl_format)) for folder in folders]
    emit_report(out, reports, importer.subscribe(subscriptions))
