"""The selected mailbox as one session sees it (RFC 9051 §7.5.1, RFC 3501 §5.2).

Sequence numbers are this session's: a message another session expunged keeps its number here
until the EXPUNGE is announced, which happens only where the RFC allows it (never during FETCH,
STORE or SEARCH without UID). Changes arrive from the mailstore's change log (GetChanges) and
are queued as pending untagged responses. No I/O here: the session feeds and drains it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from mailstack.message.flags import STORED_FLAGS

from .protocol import SequenceSet
from .protocol.encoder import flag_list, set_text, untagged, untagged_status

NEW, FLAGS, EXPUNGE = "new", "flags", "expunge"


@dataclass(frozen=True, slots=True)
class Change:
    uid: int
    modseq: int
    kind: str  # NEW, FLAGS or EXPUNGE
    flags: tuple[str, ...] = ()


class MailboxView:
    def __init__(
        self,
        name: str,
        readonly: bool,
        uidvalidity: int,
        uidnext: int,
        highestmodseq: int,
        messages: Iterable[tuple[int, Iterable[str], int]],
    ) -> None:
        self.name = name
        self.readonly = readonly
        self.uidvalidity = uidvalidity
        self.modseq = highestmodseq  # everything up to here has been read from the change log
        # Built in bulk (every SELECT builds one): UIDs are unique, so the tuples sort by UID alone.
        ordered = sorted(messages)
        self.uids: list[int] = [uid for uid, _, _ in ordered]
        self.flags: dict[int, frozenset[str]] = {uid: frozenset(flags) for uid, flags, _ in ordered}
        self.modseqs: dict[int, int] = {uid: modseq for uid, _, modseq in ordered}
        # RFC 3501 §7.2.6: every keyword a message here has had (lower case -> spelling), and those
        # the last FLAGS response named; a new one is announced before a FETCH can show it.
        self.keywords: dict[str, str] = {}
        self._announced: set[str] = set()
        for distinct in dict.fromkeys(self.flags.values()):  # each flag set once, in UID order
            self._note_keywords(distinct)
        self.modseq = max(self.modseq, max(self.modseqs.values(), default=0))
        self.uidnext = max(uidnext, self.uids[-1] + 1 if self.uids else 1)
        self.recent: set[int] = set()
        self.mailbox_id = 0  # the store's id of the mailbox (RFC 8474 MAILBOXID)
        # RFC 9051 Appendix E: an IMAP4rev2 session has no \Recent and gets no RECENT responses
        self.no_recent = False
        # RFC 5182: the result SEARCH RETURN (SAVE) kept, as UIDs; `$` names it. A new view (SELECT,
        # EXAMINE, CLOSE, UNSELECT) starts empty, as the RFC requires.
        self.saved: list[int] = []
        self._expunged: set[int] = set()  # gone from the store, not yet announced
        self._flag_changes: set[int] = set()  # flags changed, not yet announced
        self._announced_exists = len(self.uids)

    # ---- numbering

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def resolve(self, sequence_set: SequenceSet, uid: bool) -> list[tuple[int, int]]:
        """(seq, uid) of the messages of a sequence set or UID set, ascending, existing ones only
        (RFC 9051 §6.4.8: a UID range that matches nothing is not an error)."""
        out: list[tuple[int, int]] = []
        if not self.uids:
            return out
        if sequence_set.saved:  # `$`: the saved UIDs still here, whether the command is UID or not
            return sorted((seq, u) for u in set(self.saved) if (seq := self.seq_of(u)) is not None)
        if uid:
            for low, high in sequence_set.ranges(self.uids[-1]):
                i = bisect.bisect_left(self.uids, low)
                while i < len(self.uids) and self.uids[i] <= high:
                    out.append((i + 1, self.uids[i]))
                    i += 1
        else:
            for seq in sequence_set.iter(len(self.uids)):
                out.append((seq, self.uids[seq - 1]))
        return out

    def is_expunged(self, uid: int) -> bool:
        return uid in self._expunged

    # ---- changes

    def flags_of(self, uid: int) -> frozenset[str]:
        """Flags as the client should see them, with the session's \\Recent."""
        flags = self.flags.get(uid, frozenset())
        return flags | {"\\Recent"} if uid in self.recent else flags

    def _note_keywords(self, flags: Iterable[str]) -> None:
        for flag in flags:
            if not flag.startswith("\\"):
                self.keywords.setdefault(flag.lower(), flag)

    def flags_announcement(self) -> list[bytes]:
        """`* FLAGS (...)` and `* OK [PERMANENTFLAGS (...)]` naming every keyword of the view (SELECT,
        and whenever a keyword is new: RFC 3501 §7.2.6, RFC 9051 §7.3.5). A read-only view
        can store nothing: PERMANENTFLAGS is empty (RFC 3501 §6.3.2)."""
        keywords = sorted(self.keywords.values())
        self._announced = set(self.keywords)
        permanent = flag_list([*STORED_FLAGS, *keywords, "\\*"]) if not self.readonly else b"()"
        return [
            untagged(b"FLAGS " + flag_list([*STORED_FLAGS, *keywords])),
            untagged_status("OK", "flags and keywords can be stored", b"PERMANENTFLAGS " + permanent),
        ]

    def keyword_updates(self) -> list[bytes]:
        """The FLAGS announcement when a keyword appeared since the last one, else nothing; sent
        before any FETCH (or EXISTS) that could show the keyword."""
        if self._announced.issuperset(self.keywords):
            return []
        return self.flags_announcement()

    def set_flags(self, uid: int, flags: Iterable[str], modseq: int, announced: bool = True) -> None:
        if uid not in self.flags or uid in self._expunged:
            return
        new = frozenset(flags)
        self._note_keywords(new)
        if new != self.flags[uid] and not announced:
            self._flag_changes.add(uid)
        elif announced:
            self._flag_changes.discard(uid)
        self.flags[uid] = new
        self.modseqs[uid] = max(self.modseqs.get(uid, 0), modseq)

    def flags_told(self, uid: int) -> None:
        """A FETCH response of this command showed the message's flags: no untagged FETCH owed."""
        self._flag_changes.discard(uid)

    def holds(self, kind: str, uids: Iterable[int], modseq: int) -> bool:
        """Whether a change event tells this view nothing: each of its messages is already here at that
        MODSEQ or later (the session's own STORE, whose reply it applied), or, for an expunge, already
        gone from a UID range the view has covered (its own EXPUNGE)."""
        uids = list(uids)
        if not uids or not modseq:
            return False
        if kind == EXPUNGE:  # the session's own EXPUNGE: messages it has already removed
            return all(u not in self.flags and u < self.uidnext for u in uids)
        if kind not in (NEW, FLAGS):
            return False
        return all(self.modseqs.get(u, 0) >= modseq and u not in self._expunged for u in uids)

    def apply(self, changes: Iterable[Change], highestmodseq: int) -> list[int]:
        """Take changes from the change log; returns the UIDs that are new to this session."""
        new: list[int] = []
        # UID order, not the log's MODSEQ order: a new message whose flags changed after a later one
        # arrived must still get its sequence number before that one (each UID appears once).
        for change in sorted(changes, key=lambda c: c.uid):
            if change.kind == EXPUNGE:
                if change.uid in self.flags:
                    self._expunged.add(change.uid)
                    self._flag_changes.discard(change.uid)
            elif change.uid in self.flags:
                self.set_flags(change.uid, change.flags, change.modseq, announced=False)
            elif change.kind in (NEW, FLAGS) and (not self.uids or change.uid > self.uids[-1]):
                # a message this session has never seen: it gets the next sequence number
                self.uids.append(change.uid)
                self.flags[change.uid] = frozenset(change.flags)
                self._note_keywords(change.flags)
                self.modseqs[change.uid] = change.modseq
                self.uidnext = max(self.uidnext, change.uid + 1)
                new.append(change.uid)
        self.modseq = max(self.modseq, highestmodseq)
        return new

    def remove(self, uid: int) -> int | None:
        """Forget an expunged message now; returns the sequence number to announce."""
        seq = self.seq_of(uid)
        if seq is None:
            return None
        del self.uids[seq - 1]
        self.flags.pop(uid, None)
        self.modseqs.pop(uid, None)
        self.recent.discard(uid)
        self._expunged.discard(uid)
        self._flag_changes.discard(uid)
        self._announced_exists -= 1
        return seq

    def expunge_responses(self, uids: Iterable[int], vanished: bool) -> list[bytes]:
        """Forget expunged messages; the responses that announce it: `* n EXPUNGE` each, or one
        `* VANISHED uid-set` once the client enabled QRESYNC (RFC 7162 §3.2.10)."""
        gone: list[int] = []
        out: list[bytes] = []
        for uid in sorted(uids):
            seq = self.remove(uid)
            if seq is not None:
                gone.append(uid)
                out.append(b"* %d EXPUNGE\r\n" % seq)
        if vanished:
            return [b"* VANISHED %s\r\n" % set_text(gone).encode("ascii")] if gone else []
        return out

    def updates(self, allow_expunge: bool, with_modseq: bool, vanished: bool = False) -> list[bytes]:
        """The untagged responses owed to the client (RFC 9051 §7.5.1 decides allow_expunge)."""
        out: list[bytes] = self.keyword_updates()
        if allow_expunge and self._expunged:
            out += self.expunge_responses(list(self._expunged), vanished)
        if len(self.uids) != self._announced_exists:
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            self._announced_exists = len(self.uids)
            if not self.no_recent:
                out.append(b"* %d RECENT\r\n" % len(self.recent))
        for uid in sorted(self._flag_changes):
            seq = self.seq_of(uid)
            if seq is None:
                continue
            out.append(self.flags_response(seq, uid, with_modseq))
        self._flag_changes.clear()
        return out

    def flags_response(self, seq: int, uid: int, with_modseq: bool) -> bytes:
        modseq = b" MODSEQ (%d)" % self.modseqs.get(uid, 0) if with_modseq else b""
        return b"* %d FETCH (UID %d FLAGS %s%s)\r\n" % (seq, uid, flag_list(sorted(self.flags_of(uid))), modseq)
