"""Which mailbox names a LIST returns and with what attributes: RFC 3501 §6.3.8 patterns,
RFC 5258 selection options (SUBSCRIBED, RECURSIVEMATCH, \\NonExistent, CHILDINFO), RFC 6154
SPECIAL-USE selection. Pure: the handler fetches the names, this decides."""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mailstack.message.mailbox_patterns import compile_patterns


@dataclass(frozen=True, slots=True)
class Entry:
    """A mailbox name the account knows: an existing mailbox, or a \\NonExistent one (a parent of
    existing or subscribed names, or a subscribed name whose mailbox is gone)."""

    name: str
    exists: bool
    subscribed: bool = False
    special_use: str = ""  # "\\Sent" etc.


@dataclass(frozen=True, slots=True)
class Listed:
    entry: Entry
    has_children: bool
    childinfo: tuple[str, ...] = ()  # RFC 5258 §3.5: selection options a descendant matches


def with_parents(entries: Iterable[Entry]) -> dict[str, Entry]:
    """The entries by name, plus a \\NonExistent entry for each missing superior name."""
    out = {e.name: e for e in entries}
    for name in list(out):
        parts = name.split("/")
        for i in range(1, len(parts)):
            out.setdefault("/".join(parts[:i]), Entry("/".join(parts[:i]), exists=False))
    return out


def _run(names: list[str], prefix: str) -> Iterator[str]:
    """The names of sorted `names` that start with `prefix`."""
    for name in itertools.islice(names, bisect_left(names, prefix), None):
        if not name.startswith(prefix):
            return
        yield name


def _childinfo(selection: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(selection & {"SUBSCRIBED", "SPECIAL-USE"}))


def select(entries: dict[str, Entry], patterns: Iterable[str], selection: frozenset[str]) -> list[Listed]:
    """The names to list, INBOX first, then in name order (patterns: RFC 3501 §6.3.8, matched in
    linear time by message.mailbox_patterns; raises PatternTooLongError past its bounds)."""
    pats = compile_patterns(tuple(patterns))
    subscribed = "SUBSCRIBED" in selection
    special = "SPECIAL-USE" in selection
    filtering = subscribed or special

    def criteria(e: Entry) -> bool:
        if not filtering:
            return e.exists
        return (not subscribed or e.subscribed) and (not special or (e.exists and bool(e.special_use)))

    names = sorted(entries)  # a name's descendants are one run here, from bisect(name + "/")
    out: list[Listed] = []
    for name in sorted(entries, key=lambda n: (n != "INBOX", n)):
        if not pats.matches(name):
            continue
        entry = entries[name]
        prefix = name + "/"
        descendants = [entries[n] for n in _run(names, prefix)]
        has_children = any(d.exists for d in descendants)
        if criteria(entry):
            recursive = "RECURSIVEMATCH" in selection and any(criteria(d) for d in descendants)
            out.append(Listed(entry, has_children, _childinfo(selection) if recursive else ()))
            continue
        # RFC 5258 §3 (\NonExistent), RFC 3501 §6.3.8 ("%"): a name that fails the criteria is still
        # listed when a descendant meets them but is not itself matched by the pattern. With a
        # filtering selection that takes RECURSIVEMATCH; with none it is a parent of mailboxes.
        if filtering and "RECURSIVEMATCH" not in selection:
            continue
        hidden = [d for d in descendants if criteria(d) and not pats.matches(d.name)]
        if not hidden:
            continue
        out.append(Listed(entry, has_children, _childinfo(selection) if filtering else ()))
    return out
