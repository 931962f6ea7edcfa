"""IMAP message flags (RFC 3501 §2.3.2, RFC 9051 §2.3.2): the one list of system flags and their
canonical spelling. Flags compare case-insensitively; system flags are kept as written here,
keywords as the client gave them. \\Recent is session state: it is never stored.
"""

from __future__ import annotations

from collections.abc import Iterable

ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
SEEN = "\\Seen"
DRAFT = "\\Draft"
RECENT = "\\Recent"

# The system flags a message keeps, in the order a FLAGS response lists them (as Dovecot does).
STORED_FLAGS = (ANSWERED, FLAGGED, DELETED, SEEN, DRAFT)
SYSTEM_FLAGS = (*STORED_FLAGS, RECENT)
_CANONICAL = {flag.lower(): flag for flag in SYSTEM_FLAGS}


def canonical_flag(flag: str) -> str:
    """A system flag in its canonical spelling ("\\SEEN" -> "\\Seen"); any other flag as it is."""
    return _CANONICAL.get(flag.lower(), flag)


def is_recent(flag: str) -> bool:
    return flag.lower() == "\\recent"


def stored_system_flag(flag: str) -> str | None:
    """The canonical spelling of a system flag a message can keep; None for \\Recent, an unknown
    system flag ("\\Foo") or a keyword."""
    canonical = _CANONICAL.get(flag.lower())
    return None if canonical is None or canonical == RECENT else canonical


def canonical_flags(flags: Iterable[str]) -> frozenset[str]:
    """The flags to store: system flags in canonical spelling, keywords as given, without empty
    names and without \\Recent (RFC 3501 §2.3.2: it cannot be stored)."""
    return frozenset(canonical_flag(flag) for flag in flags if flag and not is_recent(flag))
