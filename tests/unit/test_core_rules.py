"""Pure rules of the mailstore core: names, addresses, flags, passwords."""

from __future__ import annotations

import pytest
from mailstack.message import names
from mailstack.message.mailbox_patterns import matches
from mailstack.services.mailstore import passwords
from mailstack.services.mailstore.core import InvalidRequest, normalize_flags


@pytest.mark.parametrize(
    "name",
    ["", "..", ".", "a/../b", "a//b", "/a", "a/", "x" * 1001, "a\x00b", "tab\there", "del\x7f", "a/" * 40 + "b"],
)
def test_invalid_mailbox_names(name: str) -> None:
    with pytest.raises(names.InvalidNameError):
        names.normalize_mailbox_name(name)


def test_inbox_is_case_insensitive_and_other_names_are_not() -> None:
    assert names.normalize_mailbox_name("inBox") == "INBOX"
    assert names.normalize_mailbox_name("inbox/Sub") == "INBOX/Sub"
    assert names.normalize_mailbox_name("Sent Items") == "Sent Items"
    assert names.normalize_mailbox_name("Entwürfe/日本") == "Entwürfe/日本"


def test_addresses() -> None:
    assert names.normalize_address("<Alice@Example.TEST>") == "alice@example.test"
    assert names.normalize_address("@example.test", allow_catchall=True) == "@example.test"
    for bad in ["", "noat", "a@", "@example.test", "a b@example.test", "a@ex..test", "x" * 300 + "@a.test"]:
        with pytest.raises(names.InvalidNameError):
            names.normalize_address(bad)


def test_flags_are_canonical_and_recent_is_never_stored() -> None:
    assert normalize_flags(["\\seen", "\\SEEN", "$Label1", "\\Recent"]) == ("$Label1", "\\Seen")
    for bad in [["\\Bogus"], ["has space"], ["paren("], [""], ["x" * 101], ["f"] * 101]:
        with pytest.raises(InvalidRequest):
            normalize_flags(bad)


def test_password_hash_round_trip_and_constant_shape() -> None:
    stored = passwords.hash_password("s3cret")
    assert stored.startswith("$scrypt$ln=14,r=8,p=1$")
    assert passwords.verify_password("s3cret", stored)
    assert not passwords.verify_password("s3cret ", stored)
    assert stored != passwords.hash_password("s3cret")  # salted
    for broken in ["", "$scrypt$", "$scrypt$ln=99,r=8,p=1$AA$AA", "plain", stored[:-5]]:
        assert not passwords.verify_password("s3cret", broken)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "a/b/c", True),
        ("%", "a/b", False),
        ("%", "INBOX", True),
        ("a/%", "a/b", True),
        ("a/%", "a/b/c", False),
        ("a*c", "a/b/c", True),
        ("Sent", "Sent", True),
        ("sent", "Sent", False),
    ],
)
def test_list_wildcards(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


def test_password_cost_is_configurable_within_bounds() -> None:
    cheap = passwords.hash_password("s3cret", 10)
    assert cheap.startswith("$scrypt$ln=10,r=8,p=1$")
    assert passwords.verify_password("s3cret", cheap)  # the stored cost is used, not the setting
    assert passwords.dummy_hash(10).startswith("$scrypt$ln=10,")
    for bad in (9, 21):
        with pytest.raises(ValueError):
            passwords.hash_password("s3cret", bad)
