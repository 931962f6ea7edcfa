"""The UID lists of a Maildir folder and the POP3 UIDLs an old server announced (issue 16).

Pure parsers, so that `mailstack import maildir` keeps what clients key on:
- Dovecot's dovecot-uidlist, version 3 (Dovecot's doc/wiki "MailboxFormat/Maildir"): a header
  `3 V<uidvalidity> N<nextuid> G<guid> ...`, then one line per message
  `<uid> [<ext>...] :<filename>`, the file name without its ":2,<flags>" info. Extensions are
  a letter and a value: W<vsize> S<size> G<guid> P<pop3 uidl> O<pop3 order>.
- Courier's courierimapuiddb: `1 <uidvalidity> <nextuid>`, then `<uid> <filename>` per line
  (version 2 writes `<filename> <uid>`; the number is recognised either side).
- Dovecot's pop3_uidl_format (default `%08Xu%08Xv`): %u UID, %v UIDVALIDITY, %f file name,
  %g GUID, each with an optional zero-padded width and X for hexadecimal (lower case, as
  Dovecot writes it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DOVECOT_UIDL_FORMAT = "%08Xu%08Xv"
_FORMAT_ITEM = re.compile(r"%(0?\d*)(X?)([uvfg%])|%")
MAX_LINE_ITEMS = 64  # extension fields on one uidlist line; Dovecot writes a handful


@dataclass(frozen=True, slots=True)
class UidEntry:
    uid: int
    pop3_uidl: str = ""  # the P extension: a UIDL saved by Dovecot's pop3_save_uidl
    vsize: int | None = None  # the W extension: size with CRLF line ends
    guid: str = ""


@dataclass(frozen=True, slots=True)
class UidList:
    source: str  # "dovecot-uidlist" or "courierimapuiddb"
    uidvalidity: int
    uidnext: int
    entries: dict[str, UidEntry] = field(default_factory=dict)  # by base file name (before ":")


def base_name(filename: str) -> str:
    """A Maildir file name without its info part (":2,FLAGS"): the key of the UID lists."""
    return filename.partition(":")[0]


def _number(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 0xFFFFFFFF:
        raise ValueError(f"bad {what} {text!r}")
    return int(text)


def _dovecot_entry(line: str) -> tuple[str, UidEntry] | None:
    fields, sep, name = line.partition(" :")
    if not sep:  # not a message line: left out (its file then gets a new UID)
        return None
    uid_text, *extensions = fields.split(" ")[: MAX_LINE_ITEMS + 1]
    values = {ext[0]: ext[1:] for ext in extensions if ext}
    vsize = values.get("W", "")
    return base_name(name), UidEntry(
        uid=_number(uid_text, "UID"),
        pop3_uidl=values.get("P", ""),
        vsize=int(vsize) if vsize.isdigit() else None,
        guid=values.get("G", ""),
    )


def parse_dovecot_uidlist(text: str) -> UidList:
    """Raises ValueError when the header is not version 3 (versions 1 and 2 predate Dovecot 1.0)."""
    lines = text.splitlines()
    header = lines[0].split(" ") if lines else []
    if not header or header[0] != "3":
        raise ValueError("not a version 3 dovecot-uidlist")
    values = {item[0]: item[1:] for item in header[1:] if item}
    uidvalidity = _number(values.get("V", ""), "UIDVALIDITY")
    uidnext = _number(values.get("N", ""), "next UID")
    entries: dict[str, UidEntry] = {}
    for line in lines[1:]:
        parsed = _dovecot_entry(line.strip())
        if parsed is not None:
            entries[parsed[0]] = parsed[1]
    return UidList("dovecot-uidlist", uidvalidity, uidnext, entries)


def parse_courier_uiddb(text: str) -> UidList:
    lines = text.splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 3 or header[0] not in ("1", "2"):
        raise ValueError("not a courierimapuiddb (version 1 or 2)")
    uidvalidity, uidnext = _number(header[1], "UIDVALIDITY"), _number(header[2], "next UID")
    entries: dict[str, UidEntry] = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) != 2:
            continue
        uid_text, name = parts if parts[0].isdigit() else (parts[1], parts[0])
        entries[base_name(name)] = UidEntry(_number(uid_text, "UID"))
    return UidList("courierimapuiddb", uidvalidity, max(uidnext, 1), entries)


def format_uidl(fmt: str, uid: int, uidvalidity: int, filename: str = "", guid: str = "") -> str:
    """Dovecot's pop3_uidl_format expanded for one message. Raises ValueError for a variable
    this does not know (%m, the header's MD5, needs the message: give another format)."""
    numbers = {"u": uid, "v": uidvalidity}
    texts = {"f": base_name(filename), "g": guid}

    def expand(match: re.Match[str]) -> str:
        width, hexa, name = match.groups()
        if name is None:
            raise ValueError(f"pop3_uidl_format {fmt!r}: unknown variable at {match.start()}")
        if name == "%":
            return "%"
        if name in numbers:
            text = format(numbers[name], "x") if hexa else str(numbers[name])
        else:
            text = texts[name]
        return text.rjust(int(width), "0" if width.startswith("0") else " ") if width else text

    return _FORMAT_ITEM.sub(expand, fmt)
