"""`mailstack user import passwd-file`: accounts from Dovecot's passwd-file, hashes kept (ADR 0037).

A line is `user:password:uid:gid:gecos:home:shell:extra fields`; only the user, the password hash
and the quota among the space-separated extra fields (`userdb_quota_rule=*:storage=1G`) matter
here. uid, gid and home describe Dovecot's own storage and have no meaning for us.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mailstack.services.common.grpc_client import error_detail, error_message
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from .output import CommandError, Output, format_table

MAX_FILE_BYTES = 64 * 1024 * 1024
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_LIMIT = re.compile(r"(storage|bytes|messages)=(\d+)([bkmgt]?)", re.IGNORECASE)


@dataclass(frozen=True)
class PasswdEntry:
    line: int
    user: str
    password_hash: str
    quota_bytes: int | None = None  # None: the file sets no such limit (0 is "unlimited", as it says)
    quota_messages: int | None = None
    notes: tuple[str, ...] = field(default=())


@dataclass
class Parsed:
    entries: list[PasswdEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_passwd_file(text: str, domain: str = "") -> Parsed:
    """Every account line of a passwd-file; malformed lines become errors naming their number."""
    parsed = Parsed()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":", 7)
        user, password = fields[0].strip(), fields[1].strip() if len(fields) > 1 else ""
        if not user or not password:
            parsed.errors.append(f"line {number}: needs user:password (got {len(fields)} field(s))")
            continue
        if "@" not in user:
            if not domain:
                parsed.errors.append(f"line {number}: {user!r} has no domain: give --domain")
                continue
            user = f"{user}@{domain}"
        quota_bytes, quota_messages, notes = _quota(fields[7] if len(fields) > 7 else "")
        parsed.entries.append(PasswdEntry(number, user, password, quota_bytes, quota_messages, notes))
    return parsed


def _quota(extra: str) -> tuple[int | None, int | None, tuple[str, ...]]:
    """The global quota rule among the extra fields (Dovecot: storage= in KiB unless a unit follows,
    bytes= in bytes, messages= a count); rules for single mailboxes have no equivalent here."""
    quota_bytes: int | None = None
    quota_messages: int | None = None
    notes: list[str] = []
    for item in extra.split():
        key, _, value = item.partition("=")
        if not re.fullmatch(r"(userdb_)?quota_rule\d*", key):
            continue
        scope, _, limits = value.partition(":")
        if scope != "*":
            notes.append(f"quota rule for {scope!r} ignored (only '*' applies)")
            continue
        for limit in limits.split(":"):
            match = _LIMIT.fullmatch(limit)
            if match is None:
                notes.append(f"quota limit {limit!r} ignored")
                continue
            kind, number, unit = match.group(1).lower(), int(match.group(2)), match.group(3).lower()
            if kind == "messages":
                quota_messages = number
            else:
                scale = _UNITS[unit] if unit or kind == "bytes" else 1024
                quota_bytes = number * scale
    return quota_bytes, quota_messages, tuple(notes)


def cmd_user_import_passwd_file(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    """Create (or with --update, update) an account for every line; report each; exit 1 on any failure."""
    path = Path(args.file)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise CommandError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CommandError(f"{path}: {err}") from None
    parsed = parse_passwd_file(text, args.domain or "")
    results = [_import_entry(admin, entry, args.update) for entry in parsed.entries]
    failed = [r for r in results if r["result"] == "failed"]
    report: dict[str, Any] = {"accounts": results, "errors": parsed.errors}
    rows = [[r["account"], r["result"], r["detail"]] for r in results]
    text_report = format_table(["ACCOUNT", "RESULT", "DETAIL"], rows) + "".join(f"\n  {e}" for e in parsed.errors)
    out.emit(report, text_report)
    if failed or parsed.errors:
        raise CommandError(f"{len(failed) + len(parsed.errors)} line(s) not imported")


def _import_entry(admin: pbg.AdminStub, entry: PasswdEntry, update: bool) -> dict[str, str]:
    result = {"account": entry.user, "line": str(entry.line), "detail": "; ".join(entry.notes)}
    try:
        admin.CreateAccount(
            pb.CreateAccountRequest(
                name=entry.user,
                password_hash=entry.password_hash,
                quota_bytes=entry.quota_bytes or 0,
                quota_messages=entry.quota_messages or 0,
            ),
            timeout=60.0,
        )
        return {**result, "result": "created"}
    except grpc.RpcError as err:
        detail = error_detail(err)
        if detail is None or detail.reason != pb.ALREADY_EXISTS:
            return {**result, "result": "failed", "detail": error_message(err)}
    if not update:
        return {**result, "result": "exists", "detail": "kept as it is (--update replaces hash and quota)"}
    try:
        admin.SetPassword(pb.SetPasswordRequest(name=entry.user, password_hash=entry.password_hash), timeout=60.0)
        if entry.quota_bytes is not None or entry.quota_messages is not None:
            # A limit the line does not give stays as the account has it (not "unlimited").
            current = admin.GetAccount(pb.GetAccountRequest(name=entry.user), timeout=60.0)
            quota_bytes = current.quota_bytes if entry.quota_bytes is None else entry.quota_bytes
            quota_messages = current.quota_messages if entry.quota_messages is None else entry.quota_messages
            request = pb.SetQuotaRequest(name=entry.user, quota_bytes=quota_bytes, quota_messages=quota_messages)
            admin.SetQuota(request, timeout=60.0)
    except grpc.RpcError as err:
        return {**result, "result": "failed", "detail": error_message(err)}
    return {**result, "result": "updated"}
