"""Reading a Maildir++ tree (Dovecot's and Courier's layout) for `mailstack import maildir`.

Pure apart from reading the files: which folders there are, and each message's flags and date.
- The root's cur/ and new/ are INBOX; a folder ".A.B" is the mailbox "A/B" (its name modified
  UTF-7 on disk, RFC 3501 §5.1.3, as Dovecot writes it).
- A file name ends in ":2,FLAGS" (maildir.html, "info"): D Draft, F Flagged, R Replied (\\Answered),
  S Seen, T Trashed (\\Deleted); P (passed) has no IMAP flag. Lower-case letters are keywords
  numbered in the folder's dovecot-keywords file ("0 $Label1").
- The file's mtime is the internal date (Dovecot's maildir does the same). Files in new/ have
  no flags yet.
- A folder's UIDs come from its dovecot-uidlist, else its courierimapuiddb (maildir_uids.py); a
  file neither lists has none (uid 0), a folder without either list has no UIDVALIDITY.
- The root's `subscriptions` file (Dovecot: a "V\t2" header, then one name per line with "\t"
  between hierarchy levels; Courier and Dovecot 1: "." or "/" between levels, "INBOX." before
  every folder) lists the subscribed names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailstack.message.flags import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN
from mailstack.message.mailbox_name import decode_mailbox_name

from .maildir_uids import UidEntry, UidList, base_name, parse_courier_uiddb, parse_dovecot_uidlist

MAX_LIST_BYTES = 256 * 1024 * 1024  # a UID list bigger than this is not one (millions of lines)

# The Maildir info letters of the system flags (maildir.html); P (passed) has none.
FLAG_LETTERS = {"D": DRAFT, "F": FLAGGED, "R": ANSWERED, "S": SEEN, "T": DELETED}


@dataclass(frozen=True, slots=True)
class MaildirMessage:
    path: Path
    flags: tuple[str, ...]
    mtime: int  # unix seconds: the internal date
    kept: UidEntry | None = None  # its line in the folder's UID list; None: not listed (a new UID)


@dataclass(frozen=True, slots=True)
class MaildirFolder:
    mailbox: str  # "INBOX", "Sent", "Archive/2023"
    path: Path
    messages: tuple[MaildirMessage, ...]
    uids: UidList | None = None  # None: the folder has no UID list (or an unreadable one)
    uid_problem: str = ""  # why `uids` is None when a list was there


def keywords_of(folder: Path) -> dict[str, str]:
    """Letter -> keyword, from Dovecot's dovecot-keywords ("0 $Label1" is the letter a)."""
    out: dict[str, str] = {}
    try:
        lines = (folder / "dovecot-keywords").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        number, _, keyword = line.strip().partition(" ")
        if number.isdigit() and int(number) < 26 and keyword:
            out[chr(ord("a") + int(number))] = keyword
    return out


def flags_of(name: str, keywords: dict[str, str]) -> tuple[str, ...]:
    """IMAP flags of a Maildir file name ("1700000000.M1P2.host,S=123:2,FS" -> \\Flagged \\Seen)."""
    _, sep, info = name.rpartition(":2,")
    if not sep:
        return ()
    flags = [FLAG_LETTERS[c] if c in FLAG_LETTERS else keywords.get(c, "") for c in info]
    return tuple(sorted({f for f in flags if f}))


def uid_list(folder: Path) -> tuple[UidList | None, str]:
    """The folder's UID list (Dovecot's, else Courier's) and, when one is there but cannot be
    read, why."""
    for name, parse in (("dovecot-uidlist", parse_dovecot_uidlist), ("courierimapuiddb", parse_courier_uiddb)):
        path = folder / name
        try:
            if path.stat().st_size > MAX_LIST_BYTES:
                return None, f"{name} over {MAX_LIST_BYTES} bytes"
            return parse(path.read_text(errors="replace")), ""
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as err:
            return None, f"{name}: {err}"
    return None, ""


def _messages(folder: Path, uids: UidList | None) -> Iterator[MaildirMessage]:
    keywords = keywords_of(folder)
    entries = uids.entries if uids is not None else {}
    for sub in ("cur", "new"):
        directory = folder / sub
        if not directory.is_dir():
            continue
        for entry in sorted(os.scandir(directory), key=lambda e: (e.stat().st_mtime, e.name)):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            flags = flags_of(entry.name, keywords) if sub == "cur" else ()
            kept = entries.get(base_name(entry.name))
            yield MaildirMessage(Path(entry.path), flags, int(entry.stat().st_mtime), kept)


def _folder_part(part: str) -> str:
    try:
        return decode_mailbox_name(part.encode("ascii"))
    except (UnicodeEncodeError, ValueError):  # not modified UTF-7 (a UTF-8 layout): as it is
        return part


def read_maildir(root: Path) -> list[MaildirFolder]:
    """INBOX first, then the folders by name. Raises NotADirectoryError for a path that is not a
    Maildir (no cur/ and no new/)."""
    if not (root / "cur").is_dir() and not (root / "new").is_dir():
        raise NotADirectoryError(f"{root} is not a Maildir (no cur/ or new/)")
    folders = [_folder("INBOX", root)]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or not entry.name.startswith(".") or entry.name in (".", ".."):
            continue
        name = "/".join(_folder_part(part) for part in entry.name[1:].split("."))
        folders.append(_folder(name, Path(entry.path)))
    return folders


def _folder(mailbox: str, path: Path) -> MaildirFolder:
    uids, problem = uid_list(path)
    return MaildirFolder(mailbox, path, tuple(_messages(path, uids)), uids, problem)


def _subscription(line: str) -> str:
    """One line of a subscriptions file as a mailbox name ("" for none)."""
    if "\t" in line:  # Dovecot 2.x: levels separated by tabs, each modified UTF-7
        return "/".join(_folder_part(part) for part in line.split("\t"))
    name = line.removeprefix("INBOX.") if line != "INBOX." else ""  # Courier: INBOX.Sent
    return "/".join(_folder_part(part) for part in name.replace(".", "/").split("/")) if name else ""


def read_subscriptions(root: Path) -> list[str]:
    """The names the `subscriptions` file lists (none when there is no such file)."""
    try:
        lines = (root / "subscriptions").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    if lines and lines[0].startswith("V\t"):  # Dovecot's header and the empty line after it
        lines = lines[1:]
    names = (_subscription(line.strip("\r")) for line in lines if line.strip())
    return sorted({n for n in names if n})
