"""The one set of stores every use case of the core works on, with the lookups and side effects
they all share: account and mailbox by name (with the account-id cache), events, blob deletion.

Durability order (ARCHITECTURE.md "Rules that keep mail safe"): blob first, then the metadata
transaction, then events; a crash in between leaves an orphan blob that the sweeper removes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from mailstack.message import names
from mailstack.services.common.config import Settings
from mailstack.services.common.metrics import BLOB_CACHE_BYTES, BLOB_CACHE_LOOKUPS
from mailstack.services.mailstore.core.errors import AccountNotFound, InvalidName, MailboxNotFound, StorageError
from mailstack.services.mailstore.instrumented import instrumented
from mailstack.storage import registry
from mailstack.storage.blob.base import BlobCache, BlobStore
from mailstack.storage.blob.kept import KeptBodies
from mailstack.storage.events.base import ChangeEvent, EventBus
from mailstack.storage.metadata.base import AccountRecord, MailboxRecord, MessageRecord, MetadataStore
from mailstack.storage.queue.base import QueueBackend
from mailstack.storage.quota.base import QuotaStore

log = logging.getLogger("mailstack.mailstore")

ACCOUNT_ID_CACHE = 10_000
BLOB_DELETE_CONCURRENCY = 8


def checked_mailbox_name(name: str) -> str:
    try:
        return names.normalize_mailbox_name(name)
    except names.InvalidNameError as e:
        raise InvalidName(str(e)) from None


def checked_address(name: str, allow_catchall: bool = False) -> str:
    try:
        return names.normalize_address(name, allow_catchall=allow_catchall)
    except names.InvalidNameError as e:
        raise InvalidName(str(e)) from None


def export_cache_metrics(cache: BlobCache) -> None:
    hit, miss = BLOB_CACHE_LOOKUPS.labels("hit"), BLOB_CACHE_LOOKUPS.labels("miss")
    cache.on_lookup = lambda found: (hit if found else miss).inc()
    BLOB_CACHE_BYTES.set_function(lambda: cache.cached_bytes)


def log_missing(mailbox: MailboxRecord, record: MessageRecord) -> None:
    log.error(
        "message without its body; `mailstack fsck --repair` expunges it",
        extra={"mailbox_id": mailbox.id, "mailbox": mailbox.name, "uid": record.uid, "blob": record.blob_key},
    )


class Stores:
    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        events: EventBus,
        quota: QuotaStore,
        database: MetadataStore | None = None,
        kept_body_bytes: int = 0,
    ) -> None:
        self.metadata = metadata
        # Bodies up to this size go into the metadata transaction instead of the blob store (ADR 0045).
        self.kept_body_bytes = kept_body_bytes
        # The store itself, not its telemetry wrapper: the outbound queue is opened beside it (ADR 0008).
        self._database = database or metadata
        self.blobs = blobs
        self.events = events
        self.quota = quota
        self._account_ids: dict[str, int] = {}  # name -> id cache (see read_mailbox)

    @classmethod
    async def open(cls, settings: Settings) -> Stores:
        metadata = registry.open_metadata_store(settings.effective_metadata_url)
        await metadata.migrate()
        blobs = registry.open_blob_store(
            settings.effective_blob_url,
            s3_endpoint=settings.s3_endpoint,
            s3_region=settings.s3_region,
            s3_path_style=settings.s3_path_style,
            cache_bytes=settings.blob_cache_bytes,
            s3_client=settings.s3_client,
        )
        if isinstance(blobs, BlobCache):
            export_cache_metrics(blobs)
        kept_body_bytes = 0
        if metadata.keeps_bodies:
            # Always read through: bodies kept before an operator lowered the limit stay readable.
            blobs = KeptBodies(blobs, metadata.kept_body)
            # With S3, bodies belong in the object store (ARCHITECTURE.md); the database stays small.
            kept_body_bytes = settings.kept_body_bytes if blobs.local_reads else 0
        events = registry.open_event_bus(settings.events_url)
        quota = registry.open_quota_store(settings.quota_url, metadata)
        # Every storage call gets a span ("blob.put", "metadata.deliver", "events.publish") and a latency histogram.
        return cls(
            instrumented(metadata, "metadata"),
            instrumented(blobs, "blob"),
            instrumented(events, "events"),
            instrumented(quota, "quota"),
            database=metadata,
            kept_body_bytes=kept_body_bytes,
        )

    def open_queue(self) -> QueueBackend:
        """The outbound queue lives in the metadata database (ADR 0008): the registry opens the one
        beside whichever metadata store this is."""
        return instrumented(registry.open_queue_store(self._database), "queue")

    async def close(self) -> None:
        for closer in (self.events.close, self.quota.close, self.blobs.close, self.metadata.close):
            try:
                await closer()
            except Exception:  # closing is best effort
                log.exception("error while closing a backend")

    # ------------------------------------------------------------ lookups

    async def account(self, name: str) -> AccountRecord:
        record = await self.metadata.get_account(checked_address(name))
        if record is None:
            raise AccountNotFound(f"no account {name}")
        return record

    async def mailbox(self, account: str, name: str) -> tuple[AccountRecord, MailboxRecord]:
        record = await self.account(account)
        return record, await self.metadata.get_mailbox(record.id, checked_mailbox_name(name))

    async def read_mailbox(self, account: str, name: str) -> MailboxRecord:
        """mailbox() for calls that need only the mailbox (bodies, metadata, status, search,
        flags), one metadata read fewer: an account's id never changes and is never reused
        (AUTOINCREMENT), and deleting an account deletes its mailboxes, so a remembered id either
        finds the mailbox or fails, and a failure asks again by name, which gives the right error."""
        key = checked_address(account)
        account_id = self._account_ids.get(key)
        if account_id is not None:
            try:
                return await self.metadata.get_mailbox(account_id, checked_mailbox_name(name))
            except MailboxNotFound:
                self._account_ids.pop(key, None)  # a concurrent read may have dropped it already
        record, mailbox = await self.mailbox(account, name)
        if len(self._account_ids) >= ACCOUNT_ID_CACHE:
            self._account_ids.clear()  # bounded; refilled one read at a time
        self._account_ids[key] = record.id
        return mailbox

    # ------------------------------------------------------------ side effects

    async def publish(self, event: ChangeEvent) -> None:
        # Events are hints: a bus failure must not fail a committed operation.
        try:
            await self.events.publish(event)
        except StorageError as e:
            log.warning("event not published", extra={"error": str(e), "account": event.account})

    async def delete_blobs(self, keys: Sequence[str]) -> None:
        # A few at a time: one S3 DELETE after the other made an EXPUNGE of many messages slow.
        limit = asyncio.Semaphore(BLOB_DELETE_CONCURRENCY)

        async def one(key: str) -> None:
            async with limit:
                try:
                    await self.blobs.delete(key)
                except StorageError:
                    log.warning("blob not deleted now; the orphan sweeper will remove it", extra={"blob": key})

        await asyncio.gather(*(one(key) for key in keys))
