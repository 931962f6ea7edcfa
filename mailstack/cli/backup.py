"""`mailstack backup ACCOUNT FILE` and `mailstack restore FILE ACCOUNT`: one account in a portable
file, and back, with UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, dates, POP3 UIDLs and subscriptions.

The file is a tar (gzip when its name ends in .gz): a Maildir++ tree anyone's tools can read (INBOX
in Maildir/, other mailboxes in Maildir/.NAME with IMAP's modified UTF-7 and "." for "/", the
system flags in the file names) and, last, `mailstack-backup.json` with what Maildir cannot say.
Each message is stored as the mailstore holds it (CRLF) with its SHA-256 in the manifest, so a
restore proves it gives back the same bytes. Restore goes through the import path (importing.py):
into a mailbox that never held mail the UIDs are the same; a second restore adds nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc

from mailstack.message.mailbox_name import encode_mailbox_name
from mailstack.services.common.grpc_client import error_message
from mailstack.services.common.maildir import FLAG_LETTERS
from mailstack.v1 import mailstore_pb2 as pb

from .importing import Importer, ImportStubs, SourceFolder, SourceMessage, emit_report
from .output import CommandError, Output

MANIFEST = "mailstack-backup.json"
FORMAT = "mailstack-backup"
VERSION = 1
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
CALL_TIMEOUT = 600.0
_LETTER_OF = {flag: letter for letter, flag in FLAG_LETTERS.items()}


def folder_path(mailbox: str) -> str:
    """Where Maildir++ keeps a mailbox: INBOX at the top, others as .NAME (modified UTF-7, "/" as ".")."""
    if mailbox.upper() == "INBOX":
        return "Maildir"
    return "Maildir/." + encode_mailbox_name(mailbox).decode("ascii").replace("/", ".")


def file_name(m: pb.MessageMetadata) -> str:
    """A Maildir file name: unique by UID, the size with CRLF (Dovecot's W=) and the system flags."""
    letters = "".join(sorted(_LETTER_OF[f] for f in m.flags if f in _LETTER_OF))
    return f"{m.internal_date.unix_seconds}.M{m.uid}.mailstack,S={m.size},W={m.size}:2,{letters}"


# ---------------------------------------------------------------- backup


def cmd_backup(stubs: ImportStubs, args: argparse.Namespace, out: Output) -> None:
    """Every mailbox of the account, message by message, into FILE (written whole, then renamed)."""
    target = Path(args.file)
    partial = target.with_name(target.name + ".partial")
    mode = "w:gz" if target.name.endswith(".gz") else "w"
    try:
        with tarfile.open(partial, mode) as tar:  # type: ignore[call-overload]
            manifest = _write_messages(stubs, args.account, tar)
            _add(tar, MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
        partial.replace(target)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise CommandError(f"{target}: {err}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    boxes = manifest["mailboxes"]
    count = sum(len(b["messages"]) for b in boxes)
    out.done(
        {"file": str(target), "mailboxes": len(boxes), "messages": count},
        f"backed up {args.account}: {count} messages in {len(boxes)} mailboxes to {target}",
    )


def _write_messages(stubs: ImportStubs, account: str, tar: tarfile.TarFile) -> dict[str, Any]:
    store, admin = stubs
    record = admin.GetAccount(pb.GetAccountRequest(name=account), timeout=CALL_TIMEOUT)
    listing = store.ListMailboxes(pb.ListMailboxesRequest(account=account), timeout=CALL_TIMEOUT)
    mailboxes = []
    for mailbox in listing.mailboxes:
        if mailbox.nonexistent:
            continue
        mailboxes.append(_write_mailbox(stubs, account, mailbox.name, tar))
    subscribed = store.ListMailboxes(
        pb.ListMailboxesRequest(account=account, subscribed_only=True), timeout=CALL_TIMEOUT
    )
    return {
        "format": FORMAT,
        "version": VERSION,
        "account": record.name,
        "created": int(time.time()),
        "quota_bytes": record.quota_bytes,
        "quota_messages": record.quota_messages,
        "subscriptions": [m.name for m in subscribed.mailboxes],
        "mailboxes": mailboxes,
    }


def _write_mailbox(stubs: ImportStubs, account: str, name: str, tar: tarfile.TarFile) -> dict[str, Any]:
    store = stubs.store
    fields = pb.MetadataFields(flags=True, internal_date=True, size=True, pop3_uidl=True)
    request = pb.FetchMetadataRequest(account=account, mailbox=name, fields=fields, with_status=True)
    status: pb.MailboxStatus | None = None
    messages = []
    folder = folder_path(name)
    for reply in store.FetchMetadata(request, timeout=CALL_TIMEOUT):
        if reply.HasField("status"):
            status = reply.status
        for m in reply.messages:
            data = b"".join(
                chunk.data
                for chunk in store.FetchBody(
                    pb.FetchBodyRequest(account=account, mailbox=name, uid=m.uid), timeout=CALL_TIMEOUT
                )
            )
            member = f"{folder}/cur/{file_name(m)}"
            _add(tar, member, data, m.internal_date.unix_seconds)
            messages.append(
                {
                    "uid": m.uid,
                    "file": member,
                    "flags": [f for f in m.flags if f != "\\Recent"],
                    "internal_date": m.internal_date.unix_seconds,
                    "utc_offset_minutes": m.internal_date.utc_offset_minutes,
                    "pop3_uidl": m.pop3_uidl,
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
    if status is None:
        raise CommandError(f"{name}: the mailstore sent no status")
    return {"name": name, "uidvalidity": status.uidvalidity, "uidnext": status.uidnext, "messages": messages}


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime or int(time.time()), 0o600
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- restore


@dataclass(frozen=True)
class Backup:
    tar: tarfile.TarFile
    manifest: dict[str, Any]


def cmd_restore(stubs: ImportStubs, args: argparse.Namespace, out: Output) -> None:
    """The backup into ACCOUNT (which must exist): the same UIDs where its mailboxes never held mail."""
    path = Path(args.file)
    try:
        with tarfile.open(path, "r:*") as tar:
            backup = Backup(tar, _manifest(tar))
            account = args.account or str(backup.manifest["account"])
            importer = Importer(stubs, account, delete=False)
            reports = [importer.sync(folder) for folder in _folders(backup)]
            subscriptions = [str(n) for n in backup.manifest["subscriptions"]]
            problems = importer.subscribe(subscriptions) + _unsubscribe_others(stubs, account, subscriptions)
    except (OSError, tarfile.TarError) as err:
        raise CommandError(f"{path}: {err}") from None
    emit_report(out, reports, problems)


def _unsubscribe_others(stubs: ImportStubs, account: str, keep: list[str]) -> list[str]:
    """The account subscribed to exactly what it was (a new account's defaults included); the problems."""
    listed = stubs.store.ListMailboxes(pb.ListMailboxesRequest(account=account, subscribed_only=True), timeout=60)
    problems = []
    for name in sorted({m.name for m in listed.mailboxes} - set(keep)):
        try:
            request = pb.SubscribeRequest(account=account, name=name, subscribed=False)
            stubs.store.Subscribe(request, timeout=60)
        except grpc.RpcError as err:
            problems.append(f"unsubscribe {name}: {error_message(err)}")
    return problems


def _manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    data = _read(tar, _find(tar, MANIFEST), MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data)
    except ValueError as err:
        raise CommandError(f"{MANIFEST}: not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CommandError(f"not a mailstack backup (no {FORMAT!r} manifest)")
    if manifest.get("version") != VERSION:
        raise CommandError(f"backup format version {manifest.get('version')!r}; this program reads {VERSION}")
    _check_shape(manifest)
    return manifest


def _check_shape(manifest: dict[str, Any]) -> None:
    """Every field restore reads, of the type it reads: a damaged manifest is one clear line."""
    try:
        assert isinstance(manifest["account"], str) and isinstance(manifest["subscriptions"], list)
        for box in manifest["mailboxes"]:
            assert isinstance(box["name"], str) and isinstance(box["uidvalidity"], int)
            assert isinstance(box["uidnext"], int)
            for m in box["messages"]:
                assert isinstance(m["uid"], int) and isinstance(m["file"], str) and isinstance(m["flags"], list)
                assert all(isinstance(f, str) for f in m["flags"])
                for key in ("internal_date", "utc_offset_minutes", "size"):
                    assert isinstance(m[key], int)
                assert isinstance(m["pop3_uidl"], str) and isinstance(m["sha256"], str)
    except (AssertionError, KeyError, TypeError) as err:
        raise CommandError(f"{MANIFEST}: damaged ({err!r})") from None


def _find(tar: tarfile.TarFile, name: str) -> tarfile.TarInfo:
    try:
        return tar.getmember(name)
    except KeyError:
        raise CommandError(f"the backup has no {name}") from None


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isfile() or member.size > limit:
        raise CommandError(f"{member.name}: not a file of at most {limit} bytes")
    stream: IO[bytes] | None = tar.extractfile(member)
    if stream is None:
        raise CommandError(f"{member.name}: cannot be read")
    with stream:
        return stream.read(limit + 1)


def _folders(backup: Backup) -> Iterator[SourceFolder]:
    for box in backup.manifest["mailboxes"]:
        messages = [_message(backup, m) for m in box["messages"]]
        yield SourceFolder(box["name"], box["uidvalidity"], box["uidnext"], messages)


def _message(backup: Backup, m: dict[str, Any]) -> SourceMessage:
    def read() -> bytes:
        data = _read(backup.tar, _find(backup.tar, m["file"]), m["size"])
        if len(data) != m["size"] or hashlib.sha256(data).hexdigest() != m["sha256"]:
            raise OSError(f"{m['file']}: damaged (size or SHA-256 differs from the manifest)")
        return data

    def read_header() -> bytes:
        data = read()
        end = data.find(b"\r\n\r\n")
        return data if end < 0 else data[: end + 4]

    return SourceMessage(
        uid=m["uid"],
        flags=tuple(m["flags"]),
        internal_date=m["internal_date"],
        tz_offset=m["utc_offset_minutes"],
        size=m["size"],
        pop3_uidl=m["pop3_uidl"],
        name=m["file"],
        read=read,
        read_header=read_header,
    )
