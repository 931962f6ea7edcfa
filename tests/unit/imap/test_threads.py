"""THREAD's algorithms (RFC 5256 §2.2 ORDEREDSUBJECT, §2.3 REFERENCES) and the §4 answer, on plain
messages: the cases of the RFC's steps one by one, then properties over random mailboxes (every
message exactly once, well-formed lists, siblings in date order, no loops, deep chains)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from mailstack.message.base_subject import base_subject, casemap
from mailstack.services.imap.threads import Node, ordered_subject, references, thread_list


@dataclass
class Msg:
    seq: int
    sent: int
    raw_subject: bytes = b""
    message_id: bytes | None = None
    references: list[bytes] = field(default_factory=list)

    @property
    def subject(self) -> tuple[bytes, bool]:
        text, reply = base_subject(self.raw_subject)
        return casemap(text), reply


def answer(roots: list[Node], messages: list[Msg]) -> str:
    return thread_list(roots, {m.seq: m.seq for m in messages}).decode()


def mailbox(*specs: tuple[str, str, list[str]]) -> list[Msg]:
    """(message-id or "", subject, references) per message; sent dates in sequence order."""
    return [
        Msg(i, 1000 + i, subject.encode(), mid.encode() or None, [r.encode() for r in refs])
        for i, (mid, subject, refs) in enumerate(specs, 1)
    ]


def test_a_reply_chain() -> None:
    ms = mailbox(("a", "x", []), ("b", "Re: x", ["a"]), ("c", "Re: x", ["a", "b"]))
    assert answer(references(ms), ms) == "(1 2 3)"


def test_siblings_are_nested_lists() -> None:
    ms = mailbox(("a", "x", []), ("b", "Re: x", ["a"]), ("c", "Re: x", ["a"]), ("d", "Re: x", ["a", "c"]))
    assert answer(references(ms), ms) == "(1 (2)(3 4))"


def test_a_missing_parent_of_two_is_a_dummy_at_the_top() -> None:
    ms = mailbox(("b", "Re: x", ["gone"]), ("c", "Re: x", ["gone"]))
    assert answer(references(ms), ms) == "((1)(2))"


def test_a_missing_parent_of_one_is_pruned() -> None:
    ms = mailbox(("b", "Re: y", ["gone"]), ("c", "z", []))
    assert answer(references(ms), ms) == "(1)(2)"


def test_a_missing_message_inside_a_chain_is_pruned() -> None:
    # a -> (gone) -> c, d: the dummy's children are promoted under a (step 4B)
    ms = mailbox(("a", "x", []), ("c", "Re: x", ["a", "gone"]), ("d", "Re: x", ["a", "gone"]))
    assert answer(references(ms), ms) == "(1 (2)(3))"


def test_references_take_precedence_over_an_earlier_truncated_chain() -> None:
    # message 2 (x) says a > c > x; message 3 (c itself) says b > c: step 1C breaks a > c
    ms = mailbox(("a", "p", []), ("x", "q", ["a", "c"]), ("c", "r", ["b"]), ("b", "s", []))
    assert answer(references(ms), ms) == "(1)(4 3 2)"


def test_loops_are_not_linked() -> None:
    ms = mailbox(("a", "p", ["b"]), ("b", "q", ["a"]))
    got = answer(references(ms), ms)
    assert sorted(map(int, re.findall(r"\d+", got))) == [1, 2]


def test_duplicate_and_missing_message_ids_are_unique_messages() -> None:
    ms = mailbox(("a", "p", []), ("a", "q", []), ("", "r", []), ("", "s", []))
    assert answer(references(ms), ms) == "(1)(2)(3)(4)"


def test_subject_grouping_reply_joins_the_original() -> None:
    # step 5C (iii): a reply without references becomes a child of the original
    ms = mailbox(("a", "Re: hello", []), ("b", "hello", []))
    assert answer(references(ms), ms) == "(2 1)"


def test_subject_grouping_two_originals_get_a_dummy() -> None:
    # step 5C (iv)
    ms = mailbox(("a", "hello", []), ("b", "Hello", []))
    assert answer(references(ms), ms) == "((1)(2))"


def test_subject_grouping_into_an_existing_dummy() -> None:
    # step 5C (ii): a dummy of subject "x" takes a message of the same base subject
    ms = mailbox(("b", "Re: x", ["gone"]), ("c", "Re: x", ["gone"]), ("d", "x", []))
    assert answer(references(ms), ms) == "((1)(2)(3))"


def test_empty_subjects_are_not_grouped() -> None:
    ms = mailbox(("a", "", []), ("b", "Re:", []))
    assert answer(references(ms), ms) == "(1)(2)"


def test_siblings_and_threads_by_sent_date_then_sequence() -> None:
    ms = mailbox(("a", "x", []), ("b", "Re: x", ["a"]), ("c", "Re: x", ["a"]), ("d", "y", []))
    ms[1].sent = 5000  # b is the youngest reply
    ms[3].sent = 0  # d is the oldest thread
    assert answer(references(ms), ms) == "(4)(1 (3)(2))"


def test_ordered_subject() -> None:
    # §2.2: by base subject, the first by date the parent of the rest, threads by their first's date
    ms = mailbox(("", "b", []), ("", "Re: a", []), ("", "a", []), ("", "Re: b", []), ("", "[fwd: a]", []))
    assert answer(ordered_subject(ms), ms) == "(1 4)(2 (3)(5))"


def test_empty_answer() -> None:
    assert thread_list([], {}) == b""


def test_a_chain_deeper_than_the_recursion_limit() -> None:
    n = 3000
    ms = [Msg(i, i, b"Re: deep", b"m%d" % i, [b"m%d" % (i - 1)] if i > 1 else []) for i in range(1, n + 1)]
    got = answer(references(ms), ms)
    assert got == "(" + " ".join(str(i) for i in range(1, n + 1)) + ")"


# ---------------------------------------------------------------- properties

_ids = st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f", b"g"])
_subjects = st.sampled_from([b"", b"x", b"Re: x", b"y", b"Fwd: y", b"[l] x", b"Re: z"])


@st.composite
def mailboxes(draw: st.DrawFn) -> list[Msg]:
    n = draw(st.integers(0, 25))
    return [
        Msg(
            i,
            draw(st.integers(0, 5)),
            draw(_subjects),
            draw(st.one_of(st.none(), _ids)),
            draw(st.lists(_ids, max_size=4)),
        )
        for i in range(1, n + 1)
    ]


def _well_formed(text: str) -> None:
    # thread-list = "(" (thread-members / thread-nested) ")": balanced, never an empty list
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert "()" not in text


@settings(max_examples=150, deadline=None)
@given(mailboxes())
def test_every_message_exactly_once(ms: list[Msg]) -> None:
    for algorithm in (references, ordered_subject):
        text = answer(algorithm(ms), ms)
        _well_formed(text)
        assert sorted(int(n) for n in re.findall(r"\d+", text)) == [m.seq for m in ms]


def _walk(roots: list[Node]) -> list[tuple[Node | None, Node]]:
    out: list[tuple[Node | None, Node]] = []
    stack: list[tuple[Node | None, Node]] = [(None, r) for r in roots]
    while stack:
        parent, node = stack.pop()
        out.append((parent, node))
        stack.extend((node, c) for c in node.children)
    return out


@settings(max_examples=150, deadline=None)
@given(mailboxes())
def test_references_shape(ms: list[Msg]) -> None:
    roots = references(ms)
    for parent, node in _walk(roots):
        if node.message is None:  # step 4: dummies survive only at the top, over two or more
            assert parent is None and len(node.children) >= 2
        keys = [c.sort_key() for c in node.children]  # step 6
        assert keys == sorted(keys)
    top = [r.sort_key() for r in roots]
    assert top == sorted(top)


@settings(max_examples=100, deadline=None)
@given(mailboxes())
def test_a_reference_to_a_present_message_is_followed(ms: list[Msg]) -> None:
    # distinct subjects and one reference: the referring message hangs under the one it names
    if len(ms) < 2:
        return
    simple = [Msg(m.seq, m.sent, b"s%d" % m.seq, b"id%d" % m.seq, []) for m in ms]
    simple[-1].references = [b"id1"]
    parents = {n.message.seq: p for p, n in _walk(references(simple)) if n.message is not None}
    parent = parents[simple[-1].seq]
    assert parent is not None and parent.message is not None and parent.message.seq == 1
