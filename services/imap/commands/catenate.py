"""CATENATE (RFC 4469): an APPEND message made of TEXT literals and IMAP URLs of messages or parts
in the user's own mailboxes (protocol/imap_url.py says which URL forms). Every part is resolved
before any message of the command is stored, so a bad URL stores nothing."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import grpc

from ..protocol import AppendMessage, CatenatePart, FetchBody
from ..protocol.imap_url import BadUrl, ImapUrl, parse_imap_url
from ..replies import ImapError, no

if TYPE_CHECKING:
    from ..session import Session


def _bad_url(url: str, why: str) -> ImapError:
    # resp-text-code =/ "BADURL" SP url-resp-text: any TEXT-CHAR but "]" (RFC 4469 §6)
    shown = "".join(c for c in url if 0x20 < ord(c) < 0x7F and c != "]")
    return no(f"CATENATE: {why}", f"BADURL {shown}")


async def _mailbox_of(session: Session, parsed: ImapUrl, url: str) -> str:
    """The mailbox the URL names, its UIDVALIDITY checked (RFC 5092 §6: a URL whose UIDVALIDITY
    differs names nothing any more)."""
    if parsed.user is not None and parsed.user.lower() != session.account.lower():
        raise _bad_url(url, "the URL names another user")
    if parsed.mailbox is None:  # relative: the selected mailbox (RFC 4469 §3)
        if session.view is None:
            raise _bad_url(url, "a relative URL needs a selected mailbox")
        name, uidvalidity = session.view.name, session.view.uidvalidity
    else:
        name = parsed.mailbox
        try:
            uidvalidity = (await session.mailstore.status(name)).uidvalidity
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise _bad_url(url, "no such mailbox") from None
            raise
    if parsed.uidvalidity is not None and parsed.uidvalidity != uidvalidity:
        raise _bad_url(url, "UIDVALIDITY has changed")
    return name


async def _fetch_url(session: Session, url: str, budget: int) -> bytes:
    try:
        parsed = parse_imap_url(url)
    except BadUrl as e:
        raise _bad_url(url, str(e)) from None
    mailbox = await _mailbox_of(session, parsed, url)
    partial = None
    if parsed.partial is not None:
        origin, length = parsed.partial
        partial = (origin, length if length is not None else budget + 1)
    item = FetchBody(parsed.section, partial, peek=True)  # RFC 4469 §3: \Seen is not set
    missing: set[int] = set()
    try:
        texts = await session.mailstore.bodies(mailbox, [parsed.uid], [item], missing=missing)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise _bad_url(url, "no such message") from None
        raise
    if (parsed.uid, 0) not in texts or parsed.uid in missing:
        raise _bad_url(url, "no such message")
    return texts[(parsed.uid, 0)]


async def _join(session: Session, parts: tuple[CatenatePart, ...]) -> tuple[bytes, bool]:
    """The message the parts make, and whether a TEXT part came as literal8."""
    limit = session.settings.max_message_size
    out = bytearray()
    for part in parts:
        if part.url is not None:
            out += await _fetch_url(session, part.url, limit - len(out))
        else:
            out += part.text or b""
        if len(out) > limit:
            raise no("the catenated message is too big", "TOOBIG")  # RFC 4469 §5
    return bytes(out), any(p.binary for p in parts)


async def resolve(session: Session, messages: tuple[AppendMessage, ...]) -> list[AppendMessage]:
    """The messages of an APPEND with every CATENATE joined into its data (RFC 4469 §5)."""
    out: list[AppendMessage] = []
    for message in messages:
        if message.parts is None:
            out.append(message)
            continue
        data, binary = await _join(session, message.parts)
        out.append(dataclasses.replace(message, data=data, binary=binary, parts=None))
    return out
