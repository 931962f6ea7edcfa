"""RFC 5233 subaddress splitting (pure)."""

from __future__ import annotations

from mailstack.services.mailstore.core.subaddress import Subaddress, folder_of, split


def test_the_detail_starts_at_the_first_delimiter() -> None:
    assert split("alice+news@example.test", "+") == Subaddress("alice@example.test", "news")
    assert split("alice+a+b@example.test", "+") == Subaddress("alice@example.test", "a+b")
    assert split("alice+@example.test", "+") == Subaddress("alice@example.test", "")
    assert split("alice-news@example.test", "-") == Subaddress("alice@example.test", "news")


def test_addresses_without_a_subaddress() -> None:
    assert split("alice@example.test", "+") is None
    assert split("alice+news@example.test", "") is None  # the setting turned it off
    assert split("+news@example.test", "+") is None  # no user part (RFC 5233 §2)
    assert split('"al+ice"@example.test', "+") is None  # a quoted local part is taken whole
    assert split("no-at-sign", "+") is None


def test_a_delimiter_in_the_domain_is_not_a_subaddress() -> None:
    assert split("alice@ex+ample.test", "+") is None


def test_the_folder_keeps_the_case_the_sender_wrote() -> None:
    assert folder_of("<Alice+Lists@Example.test>", "+") == "Lists"
    assert folder_of("alice+inbox@example.test", "+") == "INBOX"
    assert folder_of("alice+@example.test", "+") is None
    assert folder_of("alice@example.test", "+") is None
