"""Update contexts (RFC 5267 §4.3, CONTEXT=SEARCH and CONTEXT=SORT): a SEARCH or SORT with RETURN
(UPDATE) is run again whenever the selected mailbox may have changed, and the difference is sent as
`* ESEARCH (TAG "t") [UID] REMOVEFROM (...)` before the EXPUNGEs (while the sequence numbers are
still valid) and `ADDTO (...)` after the EXISTS (once the new ones are), §4.3.3-§4.3.4.

SEARCH contexts answer with position 0 and mailbox order; SORT contexts keep the sort order, with
real positions. Contexts end at CANCELUPDATE (§4.3.5) or when the mailbox is no longer selected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .mailbox_view import MailboxView
from .mailstore import ImapMailstore
from .protocol.encoder import quoted, set_text
from .protocol.ordering import SortCriterion
from .protocol.search import SearchKey
from .replies import bad
from .search_keys import translate
from .sorting import OrderedMessage, sort_messages

MAX_UPDATE_CONTEXTS = 4  # §4.3.1: at least one per client; beyond, * NO [NOUPDATE "tag"]
Pairs = list[tuple[int, list[int]]]  # (context position, UIDs in the requested order)


@dataclass
class UpdateContext:
    tag: str
    uid: bool  # UID SEARCH / UID SORT: the updates name UIDs, else sequence numbers (§4.3.2)
    key: SearchKey  # run again each time: sequence numbers and \Recent mean what they mean then
    criteria: tuple[SortCriterion, ...] | None  # None: a SEARCH context (mailbox order)
    result: list[int] = field(default_factory=list)  # UIDs, in the context's order
    seen: tuple[int, ...] = ()  # the view's state when `result` was computed

    @property
    def sorted(self) -> bool:
        return self.criteria is not None


async def evaluate(mailstore: ImapMailstore, view: MailboxView, context: UpdateContext) -> list[int]:
    """The context's result now: the UIDs the view holds (and has not seen expunged) that match."""
    key, _ = translate(context.key, view)
    live = [u for u in view.uids if not view.is_expunged(u)]
    known = set(live)
    if context.criteria is None:
        return [u for u in await mailstore.search(view.name, key) if u in known]
    data = [(u, d) for u, d in await mailstore.sort_data(view.name, key) if u in known]
    # UIDs order as sequence numbers do: equal keys stay in mailbox order
    return [m.uid for m in sort_messages([OrderedMessage(u, u, d) for u, d in data], context.criteria)]


def _state(view: MailboxView) -> tuple[int, ...]:
    # what may change a result: new or expunged messages, flags (any MODSEQ), \Recent
    return (view.modseq, len(view.uids), view.uids[-1] if view.uids else 0, max(view.modseqs.values(), default=0))


def removal_pairs(old: list[int], new: set[int], sorted_context: bool) -> Pairs:
    """REMOVEFROM pairs taking `old` to its members in `new` (§4.3.4: each pair removes its set
    starting at its position; a SEARCH context uses position 0)."""
    pairs: Pairs = []
    position = 1  # where `uid` stands in the list as the pairs so far left it
    for uid in old:
        if uid in new:
            position += 1
            continue
        at = position if sorted_context else 0
        if pairs and pairs[-1][0] == at:
            pairs[-1][1].append(uid)
        else:
            pairs.append((at, [uid]))
    return pairs


def addition_pairs(kept: set[int], new: list[int], sorted_context: bool) -> Pairs:
    """ADDTO pairs taking the kept members to `new` (§4.3.3: inserted at their final positions, in
    increasing order, so each insertion lands where `new` has it)."""
    pairs: Pairs = []
    for position, uid in enumerate(new, 1):
        if uid in kept:
            continue
        at = position if sorted_context else 0
        if pairs and (pairs[-1][0] + len(pairs[-1][1]) == at or not sorted_context):
            pairs[-1][1].append(uid)
        else:
            pairs.append((at, [uid]))
    return pairs


def _line(context: UpdateContext, item: str, pairs: Pairs, view: MailboxView) -> bytes:
    parts = []
    for position, uids in pairs:
        numbers = uids if context.uid else [view.seq_of(u) or 0 for u in uids]
        # a SEARCH context's set is in mailbox order (ranges allowed); a SORT context's in its order
        text = set_text(numbers).encode() if position == 0 else b",".join(b"%d" % n for n in numbers)
        parts.append(b"%d %s" % (position, text))
    head = b"* ESEARCH (TAG " + quoted(context.tag) + b")" + (b" UID" if context.uid else b"")
    return head + b" " + item.encode() + b" (" + b" ".join(parts) + b")\r\n"


class UpdateContexts:
    """The session's live contexts, by the tag of the command that made them."""

    def __init__(self) -> None:
        self.by_tag: dict[str, UpdateContext] = {}
        self._pending: list[tuple[UpdateContext, Pairs]] = []

    def __bool__(self) -> bool:
        return bool(self.by_tag)

    def check_tag(self, tag: str, returns: tuple[str, ...] | None) -> None:
        """§4.3: UPDATE with the tag of a live context is BAD (before the command runs)."""
        if returns is not None and "UPDATE" in returns and tag in self.by_tag:
            raise bad("tag reuse: an update context already has this tag")

    def start(self, context: UpdateContext, view: MailboxView) -> list[bytes]:
        """Keep a context whose result was just answered; past MAX_UPDATE_CONTEXTS, the untagged
        refusal to send instead (§4.3.1: * NO [NOUPDATE "tag"])."""
        if len(self.by_tag) >= MAX_UPDATE_CONTEXTS:
            return [b"* NO [NOUPDATE " + quoted(context.tag) + b"] too many update contexts\r\n"]
        context.seen = _state(view)
        self.by_tag[context.tag] = context
        return []

    def cancel(self, tags: Iterable[str]) -> list[str]:
        """Drop the contexts of `tags`; the tags that had none."""
        unknown = [t for t in tags if t not in self.by_tag]
        for tag in tags:
            self.by_tag.pop(tag, None)
        return unknown

    def clear(self) -> None:
        self.by_tag.clear()
        self._pending.clear()

    async def removals(self, mailstore: ImapMailstore, view: MailboxView) -> list[bytes]:
        """Run every context whose view changed; the REMOVEFROM lines (to send before the view's
        EXPUNGEs). The additions wait for `additions`, after the view's EXISTS."""
        state = _state(view)
        out: list[bytes] = []
        self._pending = []
        for context in list(self.by_tag.values()):
            if context.seen == state:
                continue
            new = await evaluate(mailstore, view, context)
            members = set(new)
            removed = removal_pairs(context.result, members, context.sorted)
            kept = [u for u in context.result if u in members]
            if kept != [u for u in new if u in set(kept)]:  # keys never change; all the same, stay right
                removed, kept = removal_pairs(context.result, set(), context.sorted), []
            if removed:
                out.append(_line(context, "REMOVEFROM", removed, view))
            added = addition_pairs(set(kept), new, context.sorted)
            if added:
                self._pending.append((context, added))
            context.result, context.seen = new, state
        return out

    def forget(self, view: MailboxView, expunged: Iterable[int]) -> list[bytes]:
        """REMOVEFROM lines for messages this session expunges itself (EXPUNGE, MOVE), to send before
        their EXPUNGE responses (§4.3.4), while their sequence numbers still hold."""
        gone = set(expunged)
        out = []
        for context in self.by_tag.values():
            kept = [u for u in context.result if u not in gone]
            if len(kept) != len(context.result):
                out.append(_line(context, "REMOVEFROM", removal_pairs(context.result, set(kept), context.sorted), view))
                context.result = kept
        return out

    def additions(self, view: MailboxView) -> list[bytes]:
        out = [_line(context, "ADDTO", pairs, view) for context, pairs in self._pending]
        self._pending = []
        return out


def partial_item(partial: tuple[int, int], numbers: list[bytes], ordered: bool) -> bytes:
    """§4.4: PARTIAL (low:high results) of the whole result, NIL when the range holds none."""
    low, high = partial
    window = numbers[low - 1 : high]
    if not window:
        text = b"NIL"
    elif ordered:
        text = b",".join(window)
    else:
        text = set_text([int(n) for n in window]).encode()
    return b"PARTIAL (%d:%d %s)" % (low, high, text)
