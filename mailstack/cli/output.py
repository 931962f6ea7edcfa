"""What every command shares: its errors and exit codes, value parsing (sizes, counts) and
output (aligned tables, or JSON with --json)."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from mailstack.services.common.maildir_uids import format_uidl
from mailstack.v1 import mailstore_pb2 as pb

EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2


class CommandError(Exception):
    """A one-line message for stderr; the command exits 1."""


class Unreachable(Exception):
    pass


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
