"""IMAP URLs (RFC 5092) as CATENATE (RFC 4469 §3) uses them: a message or a part of one in the
user's own mailboxes. Accepted forms:

    imap://[user[;AUTH=...]@]host[:port]/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]
    /mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]       (absolute path: this server)
    ;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]                                (relative to the selected mailbox)

Mailbox names and sections are percent-decoded; mailbox names are UTF-8 (RFC 5092). URLAUTH
and URLs of a mailbox, a search or a server alone are refused (BadUrl): they name no message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .fetch import Section, parse_section
from .grammar import GrammarError

MAX_URL = 2048  # octets; a longer URL is refused before any parsing
_NUMBER = r"[1-9][0-9]{0,9}"
_MESSAGE = (
    rf";UID=(?P<uid>{_NUMBER})"
    r"(?:/;SECTION=(?P<section>[^;]*?))?"
    rf"(?:/;PARTIAL=(?P<origin>[0-9]{{1,19}})(?:\.(?P<length>[1-9][0-9]{{0,18}}))?)?"
)
_ABSOLUTE = re.compile(rf"/(?P<mailbox>[^;]+?)(?:;UIDVALIDITY=(?P<uidvalidity>{_NUMBER}))?/{_MESSAGE}", re.I)
_RELATIVE = re.compile(_MESSAGE, re.I)
_SERVER = re.compile(r"imap://(?:(?P<user>[^@/;]*)(?:;AUTH=[^@/]*)?@)?[^/@]+", re.I)


class BadUrl(ValueError):
    """The URL is not one CATENATE can resolve (RFC 4469 §5 BADURL)."""


@dataclass(frozen=True, slots=True)
class ImapUrl:
    mailbox: str | None  # None: relative to the selected mailbox
    uidvalidity: int | None
    uid: int
    section: Section
    partial: tuple[int, int | None] | None  # (origin, length or None: to the end)
    user: str | None = None  # the user of an imap:// URL, when it names one


def _decoded(text: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl("not UTF-8 after percent-decoding") from None


def _section(text: str | None) -> Section:
    if not text:
        return Section()
    try:
        return parse_section(_decoded(text).encode("ascii"))
    except (GrammarError, UnicodeEncodeError):
        raise BadUrl("invalid section") from None


def parse_imap_url(url: str) -> ImapUrl:
    """The message part a URL names; raises BadUrl."""
    if len(url) > MAX_URL or any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise BadUrl("not a URL")
    user = None
    path = url
    server = _SERVER.match(url)
    if server:
        user = _decoded(server.group("user")) if server.group("user") else None
        path = url[server.end() :]
    if path.startswith("/"):
        m = _ABSOLUTE.fullmatch(path)
        mailbox = _decoded(m.group("mailbox")) if m else None
        if mailbox is not None and mailbox.upper() == "INBOX":
            mailbox = "INBOX"  # RFC 3501 §5.1: INBOX is case-insensitive
    elif server is None:
        m = _RELATIVE.fullmatch(path)
        mailbox = None
    else:
        m = None
    if m is None:
        raise BadUrl("not the URL of a message in this server's mailboxes")
    uidvalidity = m.groupdict().get("uidvalidity")
    partial = None
    if m.group("origin") is not None:
        length = m.group("length")
        partial = (int(m.group("origin")), int(length) if length else None)
    return ImapUrl(
        mailbox=mailbox,
        uidvalidity=int(uidvalidity) if uidvalidity else None,
        uid=int(m.group("uid")),
        section=_section(m.group("section")),
        partial=partial,
        user=user,
    )
