"""Accounts, domains and aliases: the administration of who has mail here, and the recipient and
sender rules that follow from it."""

from __future__ import annotations

import asyncio

from mailstack.message import names
from mailstack.services.common.config import Settings
from mailstack.services.mailstore import passwords
from mailstack.services.mailstore.core import subaddress
from mailstack.services.mailstore.core.auth import MAX_PASSWORD_LENGTH
from mailstack.services.mailstore.core.errors import InvalidName, InvalidRequest
from mailstack.services.mailstore.core.quota import QuotaLedger, quota_verdict
from mailstack.services.mailstore.core.results import AccountRecord, AccountSummary, QuotaUsage, RecipientVerdict
from mailstack.services.mailstore.core.stores import Stores, checked_address
from mailstack.storage.metadata.base import ForwardRecord

DEFAULT_MAILBOXES: tuple[tuple[str, str], ...] = (
    ("INBOX", ""),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


def _checked_password(password: str) -> str:
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest("password must be 1..1024 characters")
    return password


class Accounts:
    def __init__(self, stores: Stores, settings: Settings, ledger: QuotaLedger) -> None:
        self.stores = stores
        self.settings = settings
        self.ledger = ledger

    async def account(self, name: str) -> AccountRecord:
        return await self.stores.account(name)

    async def summary(self, record: AccountRecord) -> AccountSummary:
        """The account as Admin shows it: its usage and its aliases."""
        aliases = [a for a, _ in await self.stores.metadata.list_aliases(record.name)]
        return AccountSummary(record, await self.ledger.usage(record), aliases)

    async def usage(self, record: AccountRecord) -> QuotaUsage:
        return await self.ledger.usage(record)

    async def create(self, name: str, password: str, quota_bytes: int, quota_messages: int) -> AccountRecord:
        name = checked_address(name)
        _checked_password(password)
        metadata = self.stores.metadata
        domain = names.domain_of(name)
        if domain not in await metadata.list_domains():
            await metadata.add_domain(domain)
        hashed = await asyncio.to_thread(passwords.hash_password, password, self.settings.password_scrypt_log_n)
        quota_bytes = quota_bytes or self.settings.default_quota_bytes
        quota_messages = quota_messages or self.settings.default_quota_messages
        record = await metadata.create_account(name, hashed, quota_bytes, quota_messages, DEFAULT_MAILBOXES)
        # Clients that show only subscribed folders (Thunderbird, phones) must see the defaults.
        for mailbox, _ in DEFAULT_MAILBOXES:
            await metadata.set_subscribed(record.id, mailbox, True)
        return record

    async def set_password(self, name: str, password: str) -> None:
        _checked_password(password)
        hashed = await asyncio.to_thread(passwords.hash_password, password, self.settings.password_scrypt_log_n)
        await self.stores.metadata.set_password(checked_address(name), hashed)

    async def delete(self, name: str) -> None:
        name = checked_address(name)
        aliases = [a for a, _ in await self.stores.metadata.list_aliases(name)]
        freed = await self.stores.metadata.delete_account(name)
        await self.stores.delete_blobs(freed)
        await self.stores.quota.set_usage(name, QuotaUsage(0, 0))
        for address in (name, *aliases):  # a later account of that name must not inherit them
            await self.stores.metadata.set_forward(ForwardRecord(address, (), False))

    async def set_quota(self, name: str, quota_bytes: int, quota_messages: int) -> AccountRecord:
        return await self.stores.metadata.set_quota(checked_address(name), quota_bytes, quota_messages)

    async def list_accounts(self) -> list[AccountRecord]:
        return await self.stores.metadata.list_accounts()

    async def recompute_quota(self, name: str = "") -> list[AccountRecord]:
        return await self.ledger.recompute(name)

    # ------------------------------------------------------------ domains and aliases

    async def add_domain(self, name: str) -> str:
        try:
            domain = names.normalize_domain(name)
        except names.InvalidNameError as e:
            raise InvalidName(str(e)) from None
        await self.stores.metadata.add_domain(domain)
        return domain

    async def delete_domain(self, name: str) -> None:
        await self.stores.metadata.delete_domain(name.strip().lower())

    async def list_domains(self) -> list[str]:
        return await self.stores.metadata.list_domains()

    async def add_alias(self, alias: str, account: str) -> tuple[str, str]:
        alias = checked_address(alias, allow_catchall=True)
        record = await self.stores.account(account)
        domain = names.domain_of(alias)
        if domain not in await self.stores.metadata.list_domains():
            await self.stores.metadata.add_domain(domain)
        await self.stores.metadata.add_alias(alias, record.name)
        return alias, record.name

    async def delete_alias(self, alias: str) -> None:
        await self.stores.metadata.delete_alias(alias.strip().lower())
        await self.stores.metadata.set_forward(ForwardRecord(alias.strip().lower(), (), False))

    async def list_aliases(self, account: str = "") -> list[tuple[str, str]]:
        """(alias, account) pairs, of one account or of all."""
        return await self.stores.metadata.list_aliases(account.strip().lower() or None)

    # ------------------------------------------------------------ recipients and senders

    async def resolve_recipient(self, rcpt: str, size: int = 0) -> tuple[RecipientVerdict, str]:
        """(verdict, account) for SMTP RCPT: aliases, catch-alls and subaddresses (RFC 5233) included."""
        try:
            rcpt = names.normalize_address(rcpt)
        except names.InvalidNameError:
            return RecipientVerdict.INVALID, ""
        record = await subaddress.resolve_account(self.stores.metadata, rcpt, self.settings.subaddress_delimiter)
        if record is None:
            if names.domain_of(rcpt) in await self.stores.metadata.list_domains():
                return RecipientVerdict.UNKNOWN, ""
            return RecipientVerdict.NOT_LOCAL, ""
        if size > self.settings.max_message_size:
            return RecipientVerdict.TOO_BIG_FOR_QUOTA, record.name
        return quota_verdict(record, await self.ledger.usage_if_limited(record), size), record.name

    async def check_sender(self, account: str, sender: str) -> bool:
        """An account may send as itself or as one of its aliases (not as a catch-all)."""
        try:
            sender = names.normalize_address(sender)
        except names.InvalidNameError:
            return False
        record = await self.stores.account(account)
        if sender == record.name:
            return True
        return any(a == sender for a, _ in await self.stores.metadata.list_aliases(record.name))
