"""Accounts, domains and aliases: the administration of who has mail here, and the recipient and
sender rules that follow from it."""

from __future__ import annotations

import asyncio

from mailstack.message import names
from mailstack.services.common.config import Settings
from mailstack.services.mailstore import imported_hashes, passwords
from mailstack.services.mailstore.core import subaddress
from mailstack.services.mailstore.core.auth import MAX_PASSWORD_LENGTH
from mailstack.services.mailstore.core.errors import InvalidName, InvalidRequest, NotAllowed
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


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _checked_password(password: str) -> str:
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest("password must be 1..1024 characters")
    return password


async def _stored_hash(password: str, password_hash: str, log_n: int) -> str:
    """What to store: our hash of a password, or a hash imported from another server as it is
    (ADR 0037; re-hashed to ours at the first successful login)."""
    if password and password_hash:
        raise InvalidRequest("give a password or a password hash, not both")
    if password_hash:
        if not passwords.needs_rehash(password_hash):
            raise InvalidRequest("a hash of our own scheme cannot be imported; give the password")
        try:
            imported_hashes.check(password_hash)
        except imported_hashes.UnsupportedHash as e:
            raise InvalidRequest(f"password hash refused: {e}") from None
        return password_hash
    return await asyncio.to_thread(passwords.hash_password, _checked_password(password), log_n)


class Accounts:
    def __init__(self, stores: Stores, settings: Settings, ledger: QuotaLedger) -> None:
        self.stores = stores
        self.settings = settings
        self.ledger = ledger
        # Serializes the steps that add a domain with those that delete one, so that a domain is never
        # deleted between an account's domain check and its insert (within this mailstore).
        self._domains = asyncio.Lock()

    async def account(self, name: str) -> AccountRecord:
        return await self.stores.account(name)

    async def summary(self, record: AccountRecord) -> AccountSummary:
        """The account as Admin shows it: its usage and its aliases."""
        aliases = [a for a, _ in await self.stores.metadata.list_aliases(record.name)]
        return AccountSummary(record, await self.ledger.usage(record), aliases)

    async def usage(self, record: AccountRecord) -> QuotaUsage:
        return await self.ledger.usage(record)

    async def create(
        self, name: str, password: str, quota_bytes: int, quota_messages: int, password_hash: str = ""
    ) -> AccountRecord:
        name = checked_address(name)
        hashed = await _stored_hash(password, password_hash, self.settings.password_scrypt_log_n)
        metadata = self.stores.metadata
        domain = names.domain_of(name)
        quota_bytes = quota_bytes or self.settings.default_quota_bytes
        quota_messages = quota_messages or self.settings.default_quota_messages
        async with self._domains:
            if domain not in await metadata.list_domains():
                await metadata.add_domain(domain)
            record = await metadata.create_account(name, hashed, quota_bytes, quota_messages, DEFAULT_MAILBOXES)
        # Clients that show only subscribed folders (Thunderbird, phones) must see the defaults.
        for mailbox, _ in DEFAULT_MAILBOXES:
            await metadata.set_subscribed(record.id, mailbox, True)
        return record

    async def set_password(self, name: str, password: str, password_hash: str = "") -> None:
        hashed = await _stored_hash(password, password_hash, self.settings.password_scrypt_log_n)
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

    async def delete_domain(self, name: str, force: bool = False) -> tuple[int, int]:
        """Stop serving a domain; refused (NotAllowed, saying how many) while accounts or aliases of it
        exist, unless force deletes them too. (accounts, aliases) deleted. A domain deleted under its
        accounts would leave them receiving mail while typos to it are answered "relay denied" and
        submission sends them out to the internet."""
        domain = name.strip().lower()
        async with self._domains:
            accounts = [a.name for a in await self.stores.metadata.list_accounts() if names.domain_of(a.name) == domain]
            aliases = [
                alias
                for alias, account in await self.stores.metadata.list_aliases(None)
                if domain in (names.domain_of(alias), names.domain_of(account))
            ]
            if (accounts or aliases) and not force:
                raise NotAllowed(
                    f"domain {domain} still has {_count(len(accounts), 'account')} and "
                    f"{_count(len(aliases), 'alias', 'aliases')}: delete them first, or force the delete "
                    "(`mailstack domain delete --force`) to delete them with it"
                )
            for alias in aliases:
                await self.stores.metadata.delete_alias(alias)
            for account in accounts:
                await self.delete(account)
            await self.stores.metadata.delete_domain(domain)
        return len(accounts), len(aliases)

    async def list_domains(self) -> list[str]:
        return await self.stores.metadata.list_domains()

    async def add_alias(self, alias: str, account: str) -> tuple[str, str]:
        alias = checked_address(alias, allow_catchall=True)
        record = await self.stores.account(account)
        domain = names.domain_of(alias)
        async with self._domains:
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
