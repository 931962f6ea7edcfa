"""Keeping the stores consistent in the background and on demand: the orphan sweep, change-log
pruning, quota repair, and the integrity check behind `mailstack fsck` (integrity.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from mailstack.services.common.config import Settings
from mailstack.services.mailstore.core import integrity
from mailstack.services.mailstore.core.errors import StorageUnavailable
from mailstack.services.mailstore.core.quota import QuotaLedger
from mailstack.services.mailstore.core.results import IntegrityReport
from mailstack.services.mailstore.core.stores import Stores
from prometheus_client import Counter

log = logging.getLogger("mailstack.mailstore")

# Which replica ran what: each replica counts the rounds it ran, so the sum over replicas is the
# cluster's and a job counted on two replicas in the same round ran twice (ADR 0035).
JOB_RUNS = Counter("mailstack_background_job_runs", "Rounds of a background job run by this replica", ["job"])

QUOTA_WATCH_SECONDS = 30.0  # how soon counters lost with a Redis outage or restart are recomputed
LEASE_ROUNDS = 2  # a job's lease outlives this many rounds: a dead leader's job moves on after that


class Maintenance:
    def __init__(self, stores: Stores, settings: Settings, ledger: QuotaLedger) -> None:
        self.stores = stores
        self.settings = settings
        self.ledger = ledger
        self._sweeper: asyncio.Task[None] | None = None
        self._quota_watch: asyncio.Task[None] | None = None
        # This replica, as the holder of background jobs' leases (names unique even across restarts).
        self.holder = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._led: set[str] = set()

    def start_background(self) -> None:
        if self.settings.orphan_sweep_seconds > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="orphan-sweeper")
        if not self.ledger.by_metadata and self._quota_watch is None:
            self._quota_watch = asyncio.create_task(self._watch_quota_forever(), name="quota-watch")

    async def stop_background(self) -> None:
        for task in (self._quota_watch, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._quota_watch = self._sweeper = None
        for job in sorted(self._led):  # a graceful stop hands the jobs over at once
            with contextlib.suppress(Exception):
                await self.stores.metadata.release_lease(f"job:{job}", self.holder)
        self._led.clear()

    @staticmethod
    def lease_seconds(every: float) -> int:
        return max(1, int(every * LEASE_ROUNDS))

    async def lead(self, job: str, every: float) -> bool:
        """Whether this replica runs the background `job` this round: one replica at a time holds its
        lease in the metadata store and renews it every round; when it dies, the lease expires after
        LEASE_ROUNDS rounds and another replica takes the job over (ADR 0028)."""
        granted, _ = await self.stores.metadata.acquire_lease(f"job:{job}", self.holder, self.lease_seconds(every))
        if granted:
            self._led.add(job)
        else:
            self._led.discard(job)
        return granted

    async def lead_round(self, job: str, every: float, work: Callable[[], Awaitable[object]]) -> bool:
        """One round of `job` here if this replica holds its lease (else False). The lease is renewed
        while the round runs: a round longer than the lease (a big bucket to list, a slow database)
        would otherwise let another replica start the job beside it. A renewal refused (the lease
        was lost: this replica stalled past it) stops the round."""
        if not await self.lead(job, every):
            return False
        async with self.running(job):
            task = asyncio.ensure_future(work())
            try:
                while not (await asyncio.wait({task}, timeout=self.lease_seconds(every) / 3))[0]:
                    if not await self.lead(job, every):
                        log.warning("background job %s: lease lost to another replica, round stopped", job)
                        break
            finally:
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # its error, if any, is the caller's
        return True

    @contextlib.asynccontextmanager
    async def running(self, job: str, led: bool = True) -> AsyncIterator[None]:
        """Around one round of a background job: counted, and logged with this replica's name and the
        round's start and end, so an operator (and the topology test) can see who ran what, when.
        led=False: a round run without the lease (a replica repairing what only it saw)."""
        started = time.time()
        try:
            yield
        finally:
            JOB_RUNS.labels(job).inc()
            log.info(
                "background job %s ran %s %s from %.3f to %.3f",
                job, "on" if led else "without the lease on", self.holder, started, time.time(),
                extra={"job": job, "holder": self.holder, "led": led},
            )  # fmt: skip

    async def sweep_orphans(self, min_age_seconds: float | None = None) -> int:
        """Remove blobs no message references (left by a crash between blob and metadata write)."""
        min_age = self.settings.orphan_min_age_seconds if min_age_seconds is None else min_age_seconds
        cutoff = time.time() - min_age
        removed = 0
        async for key, mtime in self.stores.blobs.list_keys():
            if mtime > cutoff or await self.stores.metadata.blob_referenced(key):
                continue
            await self.stores.blobs.delete(key)
            removed += 1
        if removed:
            log.info("orphan sweeper removed blobs", extra={"count": removed})
        return removed

    async def prune_change_log(self, now: float | None = None) -> int:
        """Forget expunges older than change_log_days (QRESYNC clients older than that resync by
        UID ranges instead)."""
        days = self.settings.change_log_days
        if days <= 0:
            return 0
        pruned = await self.stores.metadata.prune_changes((time.time() if now is None else now) - days * 86400)
        if pruned:
            log.info("change log pruned", extra={"count": pruned, "days": days})
        return pruned

    async def repair_quota(self) -> int:
        """See QuotaLedger.repair: the accounts recomputed (0: the counters were whole)."""
        return await self.ledger.repair()

    async def check_integrity(
        self, account: str = "", repair: bool = False, min_age_seconds: float | None = None
    ) -> IntegrityReport:
        min_age = self.settings.orphan_min_age_seconds if min_age_seconds is None else min_age_seconds
        return await integrity.check_integrity(self.stores, self.ledger, account, repair, min_age)

    async def _sweep_round(self) -> None:
        await self.sweep_orphans()
        await self.prune_change_log()

    async def _watch_quota_forever(self) -> None:
        while True:
            try:
                # A replica that saw a reserve fail knows what the others do not: it repairs at once. The
                # check for counters Redis lost (a restart) is one replica's job.
                led = await self.lead_round("quota-repair", QUOTA_WATCH_SECONDS, self.repair_quota)
                if not led and self.ledger.suspect:
                    async with self.running("quota-repair", led=False):
                        await self.repair_quota()
            except StorageUnavailable as e:
                log.debug("quota store still unavailable: %s", e)
            except Exception:
                log.exception("quota repair failed")
            await asyncio.sleep(QUOTA_WATCH_SECONDS)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.orphan_sweep_seconds)
            try:
                await self.lead_round("orphan-sweep", self.settings.orphan_sweep_seconds, self._sweep_round)
            except StorageUnavailable as e:
                log.warning("orphan sweep skipped", extra={"error": str(e)})
            except Exception:
                log.exception("orphan sweep failed")
