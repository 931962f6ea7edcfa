"""What every command shares: its errors and exit codes, value parsing (sizes, counts) and
output (aligned tables, or JSON with --json)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from mailstack.services.common.config import SettingError, env_name
from mailstack.services.common.maildir_uids import format_uidl
from mailstack.v1 import mailstore_pb2 as pb

# Exit codes (README "Exit codes" and `mailstack --help` list them): scripts tell "fix the command
# or the settings" from "the mailstore is down" from "it said no".
EXIT_OK = 0
EXIT_ERROR = 1  # refused: the mailstore (or this command) said no, the reason is printed; fsck found problems
EXIT_USAGE = 2  # bad arguments or settings: nothing was started or changed
EXIT_UNREACHABLE = 3  # the mailstore did not answer (not running, wrong address, another CA)
EXIT_IN_USE = 4  # serve: a port or the data folder is taken (another mailstack?) or not allowed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_ERROR: "refused or failed: the mailstore or the command said no (the reason is printed); fsck: problems",
    EXIT_USAGE: "usage: bad arguments or settings (nothing was started or changed)",
    EXIT_UNREACHABLE: "the mailstore did not answer (not running, wrong address, or another CA)",
    EXIT_IN_USE: "serve: a port or the data folder is in use (another mailstack?) or not allowed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class CommandError(Exception):
    """A one-line message for stderr (JSON with --json); the command exits with exit_code."""

    exit_code = EXIT_ERROR
    kind = "refused"

    def __init__(self, message: str, reason: str = "", details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # the mailstore's ErrorDetail reason (ACCOUNT_NOT_FOUND, ...), if it gave one
        self.details = details or []


class UsageError(CommandError):
    exit_code = EXIT_USAGE
    kind = "usage"


class Unreachable(CommandError):
    exit_code = EXIT_UNREACHABLE
    kind = "unreachable"


class InUse(CommandError):
    exit_code = EXIT_IN_USE
    kind = "in_use"


class Interrupted(CommandError):
    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


def report(err: CommandError, as_json: bool) -> int:
    """Print an error as `mailstack: MESSAGE` lines (several for several bad settings), or as one JSON
    object on stderr with --json; stdout keeps only results. Returns the exit code."""
    if as_json:
        error: dict[str, Any] = {"kind": err.kind, "exit_code": err.exit_code, "message": str(err).splitlines()[0]}
        if err.reason:
            error["reason"] = err.reason
        if err.details:
            error["details"] = err.details
        print(json.dumps({"error": error}, ensure_ascii=False), file=sys.stderr)
    else:
        for line in str(err).splitlines():
            print(f"mailstack: {line}", file=sys.stderr)
    return err.exit_code


def warn(message: str, as_json: bool) -> None:
    line = json.dumps({"warning": message}, ensure_ascii=False) if as_json else f"mailstack: warning: {message}"
    print(line, file=sys.stderr)


def settings_refused(errors: Sequence[SettingError]) -> UsageError:
    """One line per bad setting."""
    details = [
        {"setting": env_name(e.name), "value": e.shown, "problem": e.problem, "allowed": e.allowed} for e in errors
    ]
    return UsageError("\n".join(str(e) for e in errors), details=details)


# ---------------------------------------------------------------- value parsing and formatting

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from "1048576", "500M", "2G", "1.5GiB" (binary units; 0 = unlimited)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 1048576, 500M, 2G)")
    number, unit = match.groups()
    return int(Decimal(number) * _UNITS[unit.lower()])


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r} (must be >= 0)")
    return value


def parse_uidl_format(text: str) -> str:
    """A pop3_uidl_format this can expand ("" = keep no UIDL)."""
    try:
        format_uidl(text, 1, 1)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _limit(n: int, fmt: Callable[[int], str] = str) -> str:
    return fmt(n) if n else "unlimited"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned two spaces apart; numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def account_dict(a: pb.Account) -> dict[str, Any]:
    return {
        "name": a.name,
        "quota_bytes": a.quota_bytes,
        "quota_messages": a.quota_messages,
        "used_bytes": a.used_bytes,
        "used_messages": a.used_messages,
        "aliases": list(a.aliases),
    }


def accounts_table(accounts: Sequence[pb.Account]) -> str:
    rows = [
        [
            a.name,
            human_size(a.used_bytes),
            _limit(a.quota_bytes, human_size),
            a.used_messages,
            _limit(a.quota_messages),
            ", ".join(a.aliases),
        ]
        for a in accounts
    ]
    return format_table(["ACCOUNT", "USED", "QUOTA", "MESSAGES", "MAX MESSAGES", "ALIASES"], rows)


# ---------------------------------------------------------------- output


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str) -> None:
        print(json.dumps(data, indent=2, ensure_ascii=False) if self.as_json else text)

    def done(self, data: dict[str, Any], text: str) -> None:
        """A command that changed something: its result as JSON, or a short confirmation."""
        self.emit({"ok": True, **data}, text)
