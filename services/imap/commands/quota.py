"""GETQUOTA, GETQUOTAROOT, SETQUOTA (RFC 9208). One quota root, "", for the whole account."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import Command, MailboxArgument, QuotaRoot
from ..protocol.encoder import mailbox, untagged
from ..replies import Reply, no

if TYPE_CHECKING:
    from ..session import Session


async def _quota_line(session: Session) -> bytes | None:
    """The QUOTA response of the account's one root "", or None when the account has no limits:
    then there is no root, as a quota-list holds at least one resource (RFC 9208 §9)."""
    quota = await session.mailstore.quota()
    resources = []
    # RFC 9208 §5.1: STORAGE in units of 1024 octets; unlimited resources are not listed
    if quota.limit_bytes:
        resources.append(b"STORAGE %d %d" % ((quota.used_bytes + 1023) // 1024, quota.limit_bytes // 1024))
    if quota.limit_messages:
        resources.append(b"MESSAGE %d %d" % (quota.used_messages, quota.limit_messages))
    return untagged(b'QUOTA "" (' + b" ".join(resources) + b")") if resources else None


async def getquota(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9208 §4.2
    assert isinstance(command.args, QuotaRoot)
    line = await _quota_line(session) if command.args.root == "" else None
    if line is None:
        raise no("no such quota root", "NONEXISTENT")
    session.untagged(line)
    return None


async def getquotaroot(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9208 §4.3 (no limits: no root, "* QUOTAROOT INBOX" alone)
    assert isinstance(command.args, MailboxArgument)
    await session.mailstore.status(command.args.mailbox)
    line = await _quota_line(session)
    name = mailbox(command.args.mailbox, session.utf8)
    session.untagged(untagged(b"QUOTAROOT " + name + (b' ""' if line else b"")))
    if line:
        session.untagged(line)
    return None


async def setquota(session: Session, command: Command) -> Reply | None:
    # Command: RFC 9208 §4.1: limits are set by the operator (mailstack admin), not by users
    raise no("quota limits are set by the administrator", "NOPERM")
