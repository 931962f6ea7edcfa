"""mailbox_list: which names LIST returns (RFC 3501 §6.3.8, RFC 5258 §3, RFC 6154)."""

from __future__ import annotations

from mailstack.message.mailbox_patterns import matches
from mailstack.services.imap.mailbox_list import Entry, select, with_parents

TREE = with_parents(
    [
        Entry("INBOX", True),
        Entry("Fruit/Apple", True),
        Entry("Fruit/Banana", True, subscribed=True),
        Entry("Fruit/Peach", False, subscribed=True),
        Entry("Vegetable", True, subscribed=True),
        Entry("Vegetable/Broccoli", True, subscribed=True),
        Entry("Junk", True, special_use="\\Junk"),
    ]
)


def names(patterns: tuple[str, ...], selection: frozenset[str] = frozenset()) -> list[tuple[str, tuple[str, ...]]]:
    return [(listed.entry.name, listed.childinfo) for listed in select(TREE, patterns, selection)]


def test_patterns() -> None:
    assert matches("*", "a/b") and matches("%", "a") and not matches("%", "a/b")
    assert matches("Fr%/B*", "Fruit/Banana") and not matches("Fr%", "Fruit/Banana")
    assert matches("a.b", "a.b") and not matches("a.b", "axb")  # no regex leaks


def test_plain_list_shows_only_parents_of_hidden_mailboxes() -> None:
    # Fruit is a \NonExistent parent (never created); "%" shows it, "*" lists its children instead
    assert names(("%",)) == [("INBOX", ()), ("Fruit", ()), ("Junk", ()), ("Vegetable", ())]
    assert ("Fruit", ()) not in names(("*",))
    assert ("Fruit/Peach", ()) not in names(("*",))  # subscribed only: not a mailbox


def test_subscribed_and_recursivematch() -> None:
    subscribed = frozenset({"SUBSCRIBED"})
    assert names(("*",), subscribed) == [
        ("Fruit/Banana", ()),
        ("Fruit/Peach", ()),
        ("Vegetable", ()),
        ("Vegetable/Broccoli", ()),
    ]
    assert names(("%",), subscribed | {"RECURSIVEMATCH"}) == [
        ("Fruit", ("SUBSCRIBED",)),
        ("Vegetable", ("SUBSCRIBED",)),
    ]


def test_special_use_selection_and_several_patterns() -> None:
    assert names(("Junk", "INBOX", "Junk*"), frozenset({"SPECIAL-USE"})) == [("Junk", ())]
    listed = select(TREE, ("Fruit", "Vegetable"), frozenset())
    assert [(x.entry.name, x.has_children, x.entry.exists) for x in listed] == [
        ("Fruit", True, False),
        ("Vegetable", True, True),
    ]
