"""The one list of IMAP system flags and their canonical spelling (RFC 3501 §2.3.2)."""

from __future__ import annotations

from mailstack.message.flags import (
    RECENT,
    STORED_FLAGS,
    SYSTEM_FLAGS,
    canonical_flag,
    canonical_flags,
    is_recent,
    stored_system_flag,
)


def test_system_flags_are_the_stored_five_and_recent_in_flags_response_order() -> None:
    assert STORED_FLAGS == ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
    assert SYSTEM_FLAGS == (*STORED_FLAGS, RECENT)


def test_canonical_flag_fixes_the_case_of_system_flags_only() -> None:
    assert canonical_flag("\\SEEN") == "\\Seen"
    assert canonical_flag("\\recent") == "\\Recent"
    assert canonical_flag("\\Foo") == "\\Foo"
    assert canonical_flag("$Label1") == "$Label1"


def test_stored_system_flag_refuses_recent_unknown_and_keywords() -> None:
    assert stored_system_flag("\\draft") == "\\Draft"
    assert stored_system_flag("\\Recent") is None
    assert stored_system_flag("\\Foo") is None
    assert stored_system_flag("Seen") is None
    assert is_recent("\\RECENT") and not is_recent("\\Seen")


def test_canonical_flags_drop_recent_and_empty_names() -> None:
    assert canonical_flags(["\\seen", "\\SEEN", "", "\\Recent", "$Label1"]) == {"\\Seen", "$Label1"}
