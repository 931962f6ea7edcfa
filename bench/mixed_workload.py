"""The randomized IMAP workload of bench/imap_mixed.py, without the network: which operation a client does
next, the messages it appends, and the model of what every mailbox must hold afterwards.

The choice of operations depends only on the seed and the client's number, never on the server's answers
or timing, so every system sees the same sequence of operations; which message an operation touches is a
fraction drawn from the same stream and applied to the model's list of that mailbox when it runs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

MAILBOXES = ("INBOX", "Work", "Lists")
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "$Label1")
WEIGHTS = {  # relative frequency of each operation a logged-in client may do next
    "select": 6,
    "examine": 3,
    "fetch_flags": 10,
    "fetch_headers": 15,
    "fetch_body": 15,
    "store": 15,
    "append": 8,
    "expunge": 4,
    "noop": 8,
    "logout": 1,  # persistent sessions only; with a logout per cycle the cycle's length decides
}
NEEDS_MAILBOX = frozenset({"fetch_flags", "fetch_headers", "fetch_body"})
NEEDS_WRITABLE = frozenset({"store", "expunge"})
CYCLE = (2, 8)  # with a logout per cycle: operations between LOGIN and LOGOUT


@dataclass(frozen=True)
class Op:
    name: str
    account: int  # 0-based
    mailbox: str = "INBOX"  # SELECT/EXAMINE/APPEND: the mailbox; others act on the selected one
    pick: float = 0.0  # which message: a fraction of the mailbox's messages in UID order
    flag: str = "\\Seen"  # STORE, APPEND: the flag
    add: bool = True  # STORE: +FLAGS or -FLAGS; APPEND: with the flag or without
    size: int = 0  # APPEND: the message's size in bytes


@dataclass
class Session:
    """What a client's connection is doing, as far as its choices go."""

    account: int | None = None  # None: no connection
    mailbox: str | None = None
    writable: bool = False
    left: int = 0  # with a logout per cycle: operations before the LOGOUT


class Chooser:
    """One client's operations: the same sequence for a given seed and client on every system."""

    def __init__(self, seed: int, client: int, accounts: int, logout_each_cycle: bool) -> None:
        self.rng = random.Random(f"{seed}/{client}")
        self.accounts, self.cycles = accounts, logout_each_cycle
        self.session = Session()

    def next(self) -> Op:
        s, rng = self.session, self.rng
        if s.account is None:
            self.session = Session(rng.randrange(self.accounts), left=rng.randint(*CYCLE))
            return Op("login", self.session.account or 0)
        if self.cycles and s.left <= 0:
            return self._logout()
        allowed = [name for name in WEIGHTS if self._allowed(name)]
        name = rng.choices(allowed, [WEIGHTS[n] for n in allowed])[0]
        # Every parameter is drawn whatever the operation, so the stream stays aligned.
        mailbox, pick, flag, add = rng.choice(MAILBOXES), rng.random(), rng.choice(FLAGS), rng.random() < 0.6
        op = Op(name, s.account, mailbox, pick, flag, add, message_size(rng))
        s.left -= 1
        if name == "logout":
            return self._logout()
        if name in ("select", "examine"):
            s.mailbox, s.writable = op.mailbox, name == "select"
        return op

    def _logout(self) -> Op:
        op = Op("logout", self.session.account or 0)
        self.session = Session()
        return op

    def _allowed(self, name: str) -> bool:
        s = self.session
        if name == "logout":
            return not self.cycles
        if name in NEEDS_WRITABLE:
            return s.writable
        return name not in NEEDS_MAILBOX or s.mailbox is not None

    def reset(self) -> None:
        """The connection broke: the next operation is a new LOGIN."""
        self.session = Session()


def message_size(rng: random.Random) -> int:
    """Mostly a few KB, now and then tens of KB (a long-tailed spread like real mail)."""
    return min(96 * 1024, max(600, int(rng.lognormvariate(8.4, 0.9))))


def message(message_id: str, size: int) -> bytes:
    head = (
        f"From: Sender <load@bench.test>\r\nTo: u@test\r\nSubject: mixed bench {message_id}\r\n"
        f"Date: Mon, 07 Dec 2026 12:00:00 +0000\r\nMessage-ID: {message_id}\r\n\r\n"
    ).encode()
    line = b"the quick brown fox jumps over the lazy dog, mixed load body text 0123456789\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


@dataclass
class Stored:
    message_id: str
    flags: set[str] = field(default_factory=set)


Box = dict[int, Stored]  # UID -> what the message is and which flags it has


class Model:
    """What each mailbox of each account must hold: every APPEND, STORE and EXPUNGE the server
    acknowledged, applied in the server's order (the runner holds the account's lock around them)."""

    def __init__(self, accounts: int) -> None:
        self.boxes: dict[tuple[int, str], Box] = {(a, m): {} for a in range(accounts) for m in MAILBOXES}

    def appended(self, account: int, mailbox: str, uid: int, message_id: str, flags: set[str]) -> None:
        self.boxes[account, mailbox][uid] = Stored(message_id, set(flags))

    def stored(self, account: int, mailbox: str, uid: int, flag: str, add: bool) -> None:
        flags = self.boxes[account, mailbox][uid].flags
        if add:
            flags.add(flag)
        else:
            flags.discard(flag)

    def expunged(self, account: int, mailbox: str, uid: int) -> None:
        del self.boxes[account, mailbox][uid]

    def pick(self, account: int, mailbox: str, fraction: float, count: int = 1) -> list[int]:
        """`count` consecutive UIDs from the one at `fraction` of the mailbox ([] when it is empty)."""
        uids = sorted(self.boxes[account, mailbox])
        if not uids:
            return []
        start = min(int(fraction * len(uids)), len(uids) - 1)
        return uids[start : start + count]

    def differences(
        self,
        account: int,
        mailbox: str,
        got: Answers,
        uids: list[int],
        span: range,
        ids: bool = True,
        flags: bool = True,
    ) -> list[str]:
        """What a FETCH of `uids` (the model's messages in `span`, the UID range asked for) answered
        against the model: each of them present with its Message-ID (if `ids`) and flags (if `flags`),
        and none the model lacks in `span`. FETCH responses outside `span` are unsolicited flag updates
        (RFC 3501 §7.4.2) and pass."""
        want, where = self.boxes[account, mailbox], f"account {account + 1} {mailbox}"
        out = [f"{where}: UID {u} not in the FETCH answer" for u in uids if u not in got]
        out += [
            f"{where}: UID {u} answered, not expected ({got[u]})" for u in sorted(got) if u in span and u not in want
        ]
        for uid in [u for u in uids if u in got]:
            ours, theirs = want[uid], got[uid]
            if (ids and theirs.message_id != ours.message_id) or (flags and theirs.flags != ours.flags):
                out.append(f"{where}: UID {uid} is {theirs}, expected {ours}")
        return out

    def compare(self, account: int, mailbox: str, got: Answers, searched: set[int]) -> list[str]:
        """The whole mailbox: UID SEARCH ALL and a FETCH of every message against the model."""
        want = sorted(self.boxes[account, mailbox])
        out = (
            []
            if searched == set(want)
            else [f"account {account + 1} {mailbox}: UID SEARCH ALL gives {sorted(searched)}, expected {want}"]
        )
        return out + self.differences(account, mailbox, got, want, EVERY_UID)


EVERY_UID = range(1, 2**32)  # UID FETCH 1:*


@dataclass
class Answer:
    """What FETCH responses said of one message (None: not in any of them)."""

    message_id: str | None = None
    flags: set[str] | None = None


Answers = dict[int, Answer]
_FETCH = re.compile(rb"^\* \d+ FETCH ", re.MULTILINE)
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_MESSAGE_ID = re.compile(rb"^Message-ID: *(<[^>\r\n]*>)", re.MULTILINE | re.IGNORECASE)


def parse_fetch(response: bytes) -> Answers:
    """UID -> Message-ID and flags (without \\Recent, which only says which session saw it first) from
    the answer to UID FETCH ... (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]); of several FETCH
    responses for one UID the last FLAGS count (later ones are updates)."""
    out: Answers = {}
    for chunk in _FETCH.split(response)[1:]:
        uid = _UID.search(chunk)
        if uid is None:
            continue
        answer = out.setdefault(int(uid.group(1)), Answer())
        if flags := _FLAGS.search(chunk):
            answer.flags = set(flags.group(1).decode().split()) - {"\\Recent"}
        if message_id := _MESSAGE_ID.search(chunk):
            answer.message_id = message_id.group(1).decode()
    return out


def parse_search(response: bytes) -> set[int]:
    found = re.search(rb"^\* SEARCH([ \d]*)\r?$", response, re.MULTILINE)
    return {int(n) for n in found.group(1).split()} if found else set()


def parse_exists(response: bytes) -> int | None:
    """The message count of a SELECT or EXAMINE answer (`* N EXISTS`)."""
    found = re.search(rb"^\* (\d+) EXISTS", response, re.MULTILINE)
    return int(found.group(1)) if found else None
