"""MailstoreCore: one set of stores, and a use case over it per attribute. It opens and closes the
stores and runs the background work; the rules live in the use-case modules."""

from __future__ import annotations

import asyncio

from mailstack.services.common.config import Settings
from mailstack.services.mailstore.core.accounts import Accounts
from mailstack.services.mailstore.core.auth import Authentication
from mailstack.services.mailstore.core.changes import Changes
from mailstack.services.mailstore.core.delivery import Delivery
from mailstack.services.mailstore.core.mailboxes import Mailboxes
from mailstack.services.mailstore.core.maintenance import Maintenance
from mailstack.services.mailstore.core.quota import QuotaLedger
from mailstack.services.mailstore.core.reading import Reading
from mailstack.services.mailstore.core.sessions import Sessions
from mailstack.services.mailstore.core.stores import Stores
from mailstack.storage import registry
from mailstack.storage.errors import StorageError
from mailstack.storage.queue.base import QueueBackend
from mailstack.storage.sessions.base import SessionDirectory


class MailstoreCore:
    def __init__(self, settings: Settings, stores: Stores, sessions: SessionDirectory | None = None) -> None:
        self.settings = settings
        self.stores = stores  # for the use cases and for tests; callers use the use cases
        ledger = QuotaLedger(stores)
        self.auth = Authentication(stores, settings)
        self.accounts = Accounts(stores, settings, ledger)
        self.mailboxes = Mailboxes(stores, ledger)
        self.delivery = Delivery(stores, settings, ledger)
        self.reading = Reading(stores)
        self.changes = Changes(stores, ledger)
        self.maintenance = Maintenance(stores, settings, ledger)
        self.sessions = Sessions(sessions or registry.open_session_directory("memory://"), settings)

    @classmethod
    async def open(cls, settings: Settings) -> MailstoreCore:
        return cls(settings, await Stores.open(settings), registry.open_session_directory(settings.events_url))

    def open_queue(self) -> QueueBackend:
        """The outbound queue's store, beside the metadata (ADR 0008)."""
        return self.stores.open_queue()

    async def metadata_reachable(self, seconds: float) -> bool:
        """Whether the metadata store answers a read within `seconds` (readiness): one indexed
        lookup of a name no account has."""
        try:
            await asyncio.wait_for(self.stores.metadata.get_account(""), seconds)
        except (TimeoutError, StorageError):
            return False
        return True

    def start_background(self) -> None:
        self.maintenance.start_background()

    async def close(self) -> None:
        await self.maintenance.stop_background()
        await self.sessions.close()
        await self.stores.close()
