"""THREAD's algorithms (RFC 5256 §2.2 ORDEREDSUBJECT, §2.3 REFERENCES) and the thread-list answer
(§4). Pure, and iterative throughout: a reply chain thousands deep is data, not recursion.

A thread is a tree of `Node`s; a dummy (a message referred to but not in the result) has no message.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Threadable(Protocol):
    """What threading reads of a message (sorting.OrderedMessage provides it)."""

    @property
    def seq(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def subject(self) -> tuple[bytes, bool]: ...  # (base subject casemapped, reply or forward)
    @property
    def message_id(self) -> bytes | None: ...
    @property
    def references(self) -> list[bytes]: ...


@dataclass(eq=False)
class Node:
    message: Threadable | None = None  # None: a dummy
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    def sort_key(self) -> tuple[int, int]:
        # §2.3 step 6: sent date, then mailbox order; a dummy sorts as its first child
        node = self
        while node.message is None:
            node = node.children[0]
        return node.message.sent, node.message.seq


def _descendants(roots: Sequence[Node]) -> Iterator[Node]:
    """Every node under `roots`, parents before children."""
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


# ---------------------------------------------------------------- ORDEREDSUBJECT (§2.2)


def ordered_subject(messages: Sequence[Threadable]) -> list[Node]:
    """Messages grouped by base subject; in each, the first by sent date is the parent of the others,
    which are its children in sent-date order; threads ordered by their first message's date."""
    groups: dict[bytes, list[Threadable]] = {}
    for m in sorted(messages, key=lambda m: (m.sent, m.seq)):
        groups.setdefault(m.subject[0], []).append(m)
    threads = []
    for first, *rest in groups.values():
        root = Node(first)
        root.children = [Node(m, root) for m in rest]
        threads.append(root)
    threads.sort(key=Node.sort_key)
    return threads


# ---------------------------------------------------------------- REFERENCES (§2.3)


def _is_ancestor(node: Node, of: Node) -> bool:
    walk: Node | None = of
    while walk is not None:
        if walk is node:
            return True
        walk = walk.parent
    return False


def _link(parent: Node, child: Node) -> None:
    """Make `child` a child of `parent` unless that would make a loop."""
    # a child without children is nobody's ancestor: the walk up is only needed when it has some
    if parent is child or (child.children and _is_ancestor(child, parent)):
        return
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _id_table(messages: Sequence[Threadable]) -> list[Node]:
    """Step 1: a container per Message-ID, linked by References; returns every container in order
    of creation. A missing or repeated Message-ID gets a container of its own (unique id)."""
    table: dict[bytes, Node] = {}
    containers: list[Node] = []

    def container(msg_id: bytes) -> Node:
        node = table.get(msg_id)
        if node is None:
            node = table[msg_id] = Node()
            containers.append(node)
        return node

    for m in sorted(messages, key=lambda m: m.seq):
        node = table.get(m.message_id) if m.message_id is not None else None
        if node is None or node.message is not None:
            node = Node()
            containers.append(node)
            if m.message_id is not None and m.message_id not in table:
                table[m.message_id] = node
        node.message = m
        # 1B: link the references in order, never changing an existing link
        refs = [container(r) for r in m.references]
        for parent, child in itertools.pairwise(refs):
            if child.parent is None:
                _link(parent, child)
        # 1C: the last reference is the parent (a truncated References may have set another)
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if refs:
            _link(refs[-1], node)
    return containers


def _prune(roots: list[Node]) -> list[Node]:
    """Step 4: dummies without children go; a dummy's children take its place, except at the top
    where a dummy with several children stays (their parent in common)."""
    everything = list(_descendants(roots))
    for node in reversed(everything):  # children before parents
        node.children = _pruned_level(node.children, top=False)
        for child in node.children:
            child.parent = node
    top = _pruned_level(roots, top=True)
    for node in top:
        node.parent = None
    return top


def _pruned_level(nodes: list[Node], top: bool) -> list[Node]:
    out: list[Node] = []
    for node in nodes:
        if node.message is not None:
            out.append(node)
        elif node.children and (not top or len(node.children) == 1):
            out.extend(node.children)
        elif node.children:
            out.append(node)
    return out


def _thread_subject(node: Node) -> bytes:
    message = node.message if node.message is not None else node.children[0].message
    return message.subject[0] if message is not None else b""


def _subject_table(roots: list[Node]) -> dict[bytes, Node]:
    """Step 5B: per base subject, the root that others of that subject join."""
    table: dict[bytes, Node] = {}
    for node in roots:
        subject = _thread_subject(node)
        if not subject:
            continue
        old = table.get(subject)
        if old is None or _better_subject_root(node, old):
            table[subject] = node
    return table


def _better_subject_root(node: Node, old: Node) -> bool:
    # a dummy over a message; an original over a reply or forward (which then joins it in 5C)
    if node.message is None:
        return old.message is not None
    return old.message is not None and old.message.subject[1] and not node.message.subject[1]


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """Step 5C: threads of one base subject merged (a dummy collects them when none is the reply)."""
    table = _subject_table(roots)
    out = list(roots)
    removed: set[int] = set()
    for node in roots:
        subject = _thread_subject(node)
        target = table.get(subject) if subject else None
        if target is None or target is node:
            continue
        if target.message is None and node.message is None:
            target.children.extend(node.children)
        elif target.message is None or (
            node.message is not None
            and node.message.subject[1]
            and target.message is not None
            and not target.message.subject[1]
        ):
            target.children.append(node)
        else:
            dummy = Node(children=[target, node])
            out[out.index(target)] = dummy
            table[subject] = dummy
        removed.add(id(node))
    return [n for n in out if id(n) not in removed]


def references(messages: Sequence[Threadable]) -> list[Node]:
    """The REFERENCES algorithm, steps 1 to 6."""
    containers = _id_table(messages)
    roots = [n for n in containers if n.parent is None]  # step 2 (step 3: the table is dropped)
    roots = _group_by_subject(_prune(roots))
    for node in reversed(list(_descendants(roots))):  # step 6: deepest siblings first
        node.children.sort(key=Node.sort_key)
    roots.sort(key=Node.sort_key)
    return roots


# ---------------------------------------------------------------- the answer (§4)


def thread_list(roots: Sequence[Node], number: dict[int, int]) -> bytes:
    """The THREAD response's data: `(a b (c d)(e))` per thread, `number` mapping each message's
    sequence number to what the client is answered (itself, or its UID for UID THREAD)."""
    out: list[bytes] = []
    stack: list[bytes | Node] = []
    for root in reversed(roots):
        stack += [b")", root, b"("]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        children = item.children
        if item.message is not None:
            out.append(b"%d" % number[item.message.seq])
            if children:
                out.append(b" ")
        if len(children) == 1 and item.message is not None:
            stack.append(children[0])  # thread-members: a single child continues the list
            continue
        for child in reversed(children):  # thread-nested: one list per child
            stack += [b")", child, b"("]
    return b"".join(out)
