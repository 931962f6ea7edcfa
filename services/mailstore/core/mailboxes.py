"""An account's mailboxes: LIST, CREATE, DELETE, RENAME, SUBSCRIBE, STATUS and the \\Recent claim."""

from __future__ import annotations

from mailstack.message.mailbox_patterns import PatternTooLongError, compile_patterns
from mailstack.services.mailstore.core.changes import after_expunge
from mailstack.services.mailstore.core.errors import InvalidRequest, NotAllowed
from mailstack.services.mailstore.core.quota import QuotaLedger
from mailstack.services.mailstore.core.results import ChangeEvent, ListedMailbox, MailboxCounts, MailboxRecord
from mailstack.services.mailstore.core.stores import Stores, checked_mailbox_name
from mailstack.storage.errors import MailboxNotFound


def _superiors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class Mailboxes:
    def __init__(self, stores: Stores, ledger: QuotaLedger) -> None:
        self.stores = stores
        self.ledger = ledger

    async def list_mailboxes(self, account: str) -> tuple[list[MailboxRecord], list[str]]:
        """The account's mailboxes and its subscriptions (names)."""
        record = await self.stores.account(account)
        metadata = self.stores.metadata
        return await metadata.list_mailboxes(record.id), await metadata.list_subscriptions(record.id)

    async def listing(
        self, account: str, pattern: str, subscribed_only: bool = False, with_status: bool = False
    ) -> list[ListedMailbox]:
        """LIST/LSUB (RFC 3501 §6.3.8, RFC 5258): the names matching `pattern` (wildcards matched in
        linear time, common.mailbox_patterns), INBOX first; names that exist only as parents of
        mailboxes (or, subscribed_only, as subscriptions) are listed as \\NonExistent."""
        try:
            matcher = compile_patterns((pattern or "*",))
        except PatternTooLongError as e:
            raise InvalidRequest(str(e)) from None
        mailboxes, subscriptions = await self.list_mailboxes(account)
        subscribed = set(subscriptions)
        existing = {m.name: m for m in mailboxes}
        all_names = set(existing) | (subscribed if subscribed_only else set())
        for name in list(all_names):
            all_names.update(_superiors(name))
        # \HasChildren: the superiors of existing mailboxes (a set, not a scan per name)
        parents = {parent for name in existing for parent in _superiors(name)}
        out = []
        for name in sorted(all_names, key=lambda n: (n != "INBOX", n)):
            if not matcher.matches(name) or (subscribed_only and name not in subscribed):
                continue
            record = existing.get(name)
            counts = await self.stores.metadata.mailbox_counts(record.id) if record and with_status else None
            out.append(ListedMailbox(name, name in subscribed, name in parents, record, counts))
        return out

    async def create(self, account: str, name: str, special_use: str = "") -> MailboxRecord:
        record = await self.stores.account(account)
        name = checked_mailbox_name(name)
        mailbox = await self.stores.metadata.create_mailbox(record.id, name, special_use)
        await self.stores.publish(ChangeEvent(record.name, name, "mailbox", (), 0, mailbox.uidvalidity))
        return mailbox

    async def adopt(self, account: str, name: str, uidvalidity: int, uidnext: int) -> MailboxRecord:
        """Migration: the mailbox (created when absent) with another server's UIDVALIDITY and
        UIDNEXT, so that clients keep their caches (storage: adopt_uids)."""
        record = await self.stores.account(account)
        name = checked_mailbox_name(name)
        try:
            mailbox = await self.stores.metadata.get_mailbox(record.id, name)
        except MailboxNotFound:
            mailbox = await self.create(account, name)
        adopted = await self.stores.metadata.adopt_uids(mailbox.id, uidvalidity, uidnext)
        if adopted.uidvalidity != mailbox.uidvalidity:  # sessions that listed it re-read it
            await self.stores.publish(ChangeEvent(record.name, name, "mailbox", (), 0, adopted.uidvalidity))
        return adopted

    async def delete(self, account: str, name: str) -> None:
        record = await self.stores.account(account)
        name = checked_mailbox_name(name)
        if name == "INBOX":
            raise NotAllowed("INBOX cannot be deleted")
        result = await self.stores.metadata.delete_mailbox(record.id, name)
        await after_expunge(self.stores, self.ledger, record, result)
        await self.stores.publish(ChangeEvent(record.name, name, "mailbox"))

    async def rename(self, account: str, name: str, new_name: str) -> None:
        record = await self.stores.account(account)
        name, new_name = checked_mailbox_name(name), checked_mailbox_name(new_name)
        if new_name == "INBOX" or (new_name.startswith("INBOX/") and name == "INBOX"):
            raise NotAllowed("cannot rename to INBOX or below itself")
        if new_name == name or new_name.startswith(name + "/"):
            raise NotAllowed("cannot rename a mailbox into itself")
        await self.stores.metadata.rename_mailbox(record.id, name, new_name)
        # Both hints carry the UIDVALIDITY the mailbox keeps: NOTIFY pairs them into one LIST
        # with OLDNAME (RFC 5465 §5.4, ADR 0022).
        uidvalidity = (await self.stores.read_mailbox(account, new_name)).uidvalidity
        await self.stores.publish(ChangeEvent(record.name, name, "mailbox", (), 0, uidvalidity))
        await self.stores.publish(ChangeEvent(record.name, new_name, "mailbox", (), 0, uidvalidity))

    async def subscribe(self, account: str, name: str, subscribed: bool) -> None:
        record = await self.stores.account(account)
        name = checked_mailbox_name(name)
        await self.stores.metadata.set_subscribed(record.id, name, subscribed)
        # a hint for NOTIFY SubscriptionChange (RFC 5465 §5.5): sessions re-read the name's LIST
        await self.stores.publish(ChangeEvent(record.name, name, "mailbox"))

    async def status(self, account: str, name: str) -> tuple[MailboxRecord, MailboxCounts]:
        mailbox = await self.stores.read_mailbox(account, name)
        return mailbox, await self.stores.metadata.mailbox_counts(mailbox.id)

    async def claim_recent(self, account: str, name: str) -> tuple[int, int]:
        mailbox = await self.stores.read_mailbox(account, name)
        return await self.stores.metadata.claim_recent(mailbox.id)
