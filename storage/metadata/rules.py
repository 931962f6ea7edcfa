"""What every metadata backend must agree on: INBOX's name, how flags are stored, STORE modes.

Shared by the backends (sqlite, postgresql) so that the same data reads the same on each, and a
migration between them copies rows verbatim.
"""

from collections.abc import Iterable

from mailstack.storage.errors import NotAllowed
from mailstack.storage.metadata.base import StoreMode

INBOX = "INBOX"
UIDVALIDITY_MAX = 0xFFFFFFFF  # RFC 3501 §2.3.1.1: nz-number, 32 bits
UID_MAX = 0xFFFFFFFF


def check_kept_uid(wanted: int, uidnext: int) -> None:
    """A UID kept from another server (migration) goes only above every UID given out: UIDs
    strictly ascend in a mailbox (RFC 3501 §2.3.1.1), so a lower one is refused."""
    if not uidnext <= wanted <= UID_MAX:
        raise NotAllowed(f"UID {wanted} is not above the mailbox's UIDs (UIDNEXT {uidnext})")


def check_adoption(uidvalidity: int, current: int, highestmodseq: int, adopted: bool) -> None:
    """Another server's UIDVALIDITY is taken only by a mailbox that never stored a message (its
    UIDs cannot have been seen by a client), or kept by one that adopted it before (a second
    pass); one of our own that equals it by chance is not the source's; 0 keeps the current one."""
    if not 0 <= uidvalidity <= UIDVALIDITY_MAX:
        raise NotAllowed(f"UIDVALIDITY {uidvalidity} out of range")
    if uidvalidity and highestmodseq > 1 and (uidvalidity != current or not adopted):
        raise NotAllowed(f"the mailbox has held messages under UIDVALIDITY {current}: it cannot take {uidvalidity}")


def flags_text(flags: Iterable[str]) -> str:
    """Flags are stored as one space-joined string of sorted names."""
    return " ".join(sorted(flags))


def flags_tuple(text: str) -> tuple[str, ...]:
    return tuple(sorted(text.split()))


def mailbox_name(name: str) -> str:
    # RFC 3501 §5.1: INBOX is case-insensitive, every other name case-sensitive.
    return INBOX if name.upper() == INBOX else name


def apply_mode(current: frozenset[str], mode: StoreMode, flags: frozenset[str]) -> frozenset[str]:
    if mode == "replace":
        return flags
    if mode == "add":
        return current | flags
    if mode == "remove":
        return current - flags
    raise ValueError(f"unknown store mode {mode!r}")
