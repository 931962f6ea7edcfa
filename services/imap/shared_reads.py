"""One change-log read and one \\Recent claim per mailbox for the sessions of this process that need
the same one at once. A delivery wakes every IDLE session on the mailbox together; each asking the
mailstore the same GetChanges and ClaimRecent made one event cost two round trips per session, and
the last session told waited for all of them (the tail of IDLE push, issue 19).

Sharing never serves a caller older news than its own read would: a read is joined only when it
began after the caller's latest hint (`tick`) and from a MODSEQ no later than the caller's, and a
hint that arrives while a read is under way starts another for whoever got it. A read is joined by
callers further on too (each keeps the changes after its own MODSEQ), and stays joinable for a
moment after it is answered: sessions that joined different reads of a burst would otherwise stand
at different MODSEQs and need a read each for every later event. Both are per process, as the
notifier is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from .mailstore import ChangeLog, ImapMailstore

KEPT_SECONDS = 1.0  # an answered read stays joinable this long (a burst's sessions meet on it)
MAX_CLAIMED = 10_000  # mailboxes whose claimed \Recent floor is remembered (forgetting costs a round trip)
_ticks = itertools.count(1)


def tick() -> int:
    """A point in this process's order of hints and reads (strictly increasing)."""
    return next(_ticks)


@dataclass
class _Read:
    started: int  # the tick when it was sent: it sees every change whose hint came before
    since: int  # the MODSEQ it reads after
    task: asyncio.Future[ChangeLog]


class SharedReads:
    def __init__(self) -> None:
        # (account, mailbox) -> the latest read, under way or answered less than KEPT_SECONDS ago
        self._reads: dict[tuple[str, str], _Read] = {}
        # (account, mailbox, UIDVALIDITY) -> every UID below is claimed by a claim this process sent
        # or by an earlier one (the floor only rises, RFC 3501 §2.3.2)
        self._claimed: dict[tuple[str, str, int], int] = {}

    async def changes(self, mailstore: ImapMailstore, mailbox: str, since: int, hinted: int) -> ChangeLog:
        """The change log of `mailbox` after MODSEQ `since`, from a read sent after tick `hinted`
        (the caller's latest hint): a suitable one under way or just answered is shared, else a new
        one is sent."""
        key = (mailstore.account, mailbox)
        read = self._reads.get(key)
        if read is None or read.started <= hinted or read.since > since:
            read = _Read(tick(), since, asyncio.ensure_future(mailstore.changes(mailbox, since)))
            self._reads[key] = read
            read.task.add_done_callback(lambda task: self._read_done(key, task))
        # shielded: a session that goes away (its task cancelled) does not cancel the others' read
        log = await asyncio.shield(read.task)
        if read.since == since:
            return log
        # the same answer a read from `since` gets: the log holds each UID once, at its latest MODSEQ
        return dataclasses.replace(log, changes=[c for c in log.changes if c.modseq > since])

    def _read_done(self, key: tuple[str, str], task: asyncio.Future[ChangeLog]) -> None:
        if task.cancelled() or task.exception() is not None:  # retrieved: every waiter got it already
            self._forget(key, task)
        else:
            asyncio.get_running_loop().call_later(KEPT_SECONDS, self._forget, key, task)

    def _forget(self, key: tuple[str, str], task: asyncio.Future[ChangeLog]) -> None:
        read = self._reads.get(key)
        if read is not None and read.task is task:
            del self._reads[key]

    async def claim_recent(
        self, mailstore: ImapMailstore, mailbox: str, uidvalidity: int, new: Iterable[int]
    ) -> set[int]:
        """Which of the `new` UIDs get \\Recent in this session (RFC 3501 §2.3.2: one session gets
        each). A claim moves the mailbox's floor to its UIDNEXT, above every UID that existed when
        it was sent: UIDs a claim of this process already covers go to that claim's session, and
        this one learns so without a round trip or a wait."""
        key = (mailstore.account, mailbox, uidvalidity)
        new = list(new)
        if not new or max(new) < self._claimed.get(key, 0):
            return set()
        self._cover(key, max(new) + 1)  # before the call: sessions asking meanwhile leave them to it
        first, uidnext = await mailstore.claim_recent(mailbox)
        self._cover(key, uidnext)
        return {uid for uid in new if first <= uid < uidnext}

    def _cover(self, key: tuple[str, str, int], below: int) -> None:
        if len(self._claimed) >= MAX_CLAIMED and key not in self._claimed:
            self._claimed.clear()
        self._claimed[key] = max(self._claimed.get(key, 0), below)
