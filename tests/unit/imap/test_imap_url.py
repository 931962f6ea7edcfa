"""protocol/imap_url.py: the IMAP URL forms CATENATE resolves (RFC 5092, RFC 4469 §3)."""

from __future__ import annotations

import pytest
from mailstack.services.imap.protocol.fetch import Section
from mailstack.services.imap.protocol.imap_url import BadUrl, ImapUrl, parse_imap_url


def test_the_three_forms() -> None:
    assert parse_imap_url("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME") == ImapUrl(
        "Drafts", 385759045, 20, Section((1,), "MIME"), None
    )
    assert parse_imap_url(";UID=20/;SECTION=HEADER.FIELDS%20(SUBJECT)/;PARTIAL=5") == ImapUrl(
        None, None, 20, Section((), "HEADER.FIELDS", ("SUBJECT",)), (5, None)
    )
    url = parse_imap_url("imap://fred%40example.org;AUTH=*@mail.example.org:143/a/b%C3%A9;UIDVALIDITY=7/;UID=3")
    assert (url.user, url.mailbox, url.uidvalidity, url.uid, url.section) == (
        "fred@example.org",
        "a/bé",
        7,
        3,
        Section(),
    )
    assert parse_imap_url("/inbox/;UID=1/;PARTIAL=0.10").mailbox == "INBOX"
    assert parse_imap_url("/inbox/;UID=1/;PARTIAL=0.10").partial == (0, 10)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/INBOX",  # a mailbox, not a message
        "/INBOX/;UID=0",
        "/INBOX/;UID=1/;SECTION=FOO",
        "/INBOX/;UID=1/;PARTIAL=0.0",
        "/INBOX/;UID=1/;URLAUTH=anonymous:internal:0123",
        "/%FF/;UID=1",  # not UTF-8
        "imap://host",
        "imap://host;UID=1",
        "http://example.com/INBOX/;UID=1",
        "/INBOX/;UID=1 ",
        "/INBOX/;UID=" + "9" * 30,
        "/" + "a" * 3000 + "/;UID=1",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(BadUrl):
        parse_imap_url(url)
