"""Message bodies fetched ahead of the commands that will ask for them (POP3 RETR, IMAP FETCH).

Clients that download a mailbox ask for one message after another. A FetchBodies call for the next
messages costs about as much CPU as a call for one (a grpc.aio call costs ~1 ms on each side
whatever it carries), so a session fetches a batch and answers each command from it. Each body is
resolved as it arrives: a command waits for its own message only, not for the whole batch.

One budget per process bounds the bytes all sessions hold (`ReadAheadBudget`); a session that is
granted nothing fetches each message alone. Bytes are counted as stored: a body transformed on
arrival (POP3 dot-stuffing) can be somewhat larger in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

log = logging.getLogger("mailstack.read_ahead")

Items = AsyncGenerator[tuple[int, bytes, bool], None]  # (uid, stored bytes, only CRLF line ends)


class ReadAheadBudget:
    """Bytes reserved before a fetch and given back as commands send them (one event loop: no lock)."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = max(0, limit)
        self.held = 0
        self._on_change = on_change  # e.g. a gauge's set

    def take(self, wanted: int) -> int:
        """Reserve up to `wanted` bytes; returns how many were granted (0 when none are left)."""
        granted = max(0, min(wanted, self.limit - self.held))
        self.held += granted
        self._changed()
        return granted

    def give_back(self, count: int) -> None:
        self.held = max(0, self.held - count)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.held)


class ReadAhead:
    """One session's bodies fetched ahead: a slot per UID, resolved as its body arrives (None when it
    did not: gone, or the call failed; the command then fetches that message alone)."""

    def __init__(self, budget: ReadAheadBudget, name: str) -> None:
        self._budget = budget
        self._name = name
        self._slots: dict[int, asyncio.Future[bytes | None]] = {}
        self._held: dict[int, int] = {}  # uid -> budget bytes its arrived body holds
        self._pending = 0  # budget bytes reserved for bodies not arrived yet
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, uid: int) -> bool:
        return uid in self._slots

    def start(
        self, uids: list[int], reserved: int, items: Items, transform: Callable[[bytes, bool], bytes] | None = None
    ) -> None:
        """Drop what is held, then resolve the slots of `uids` from `items` (a FetchBodies call
        started for them), with `reserved` bytes already taken from the budget for them."""
        self.drop()
        loop = asyncio.get_running_loop()
        slots = {uid: loop.create_future() for uid in uids}
        self._slots = dict(slots)  # take() removes its slot from this one; the fill keeps them all
        self._pending = reserved
        self._task = asyncio.create_task(self._fill(slots, items, transform), name=self._name)

    async def take(self, uid: int) -> bytes | None:
        """The body of `uid` once it arrived; None when it is not held or did not arrive."""
        slot = self._slots.pop(uid, None)
        if slot is None:
            return None
        body = await slot
        self._budget.give_back(self._held.pop(uid, 0))
        return body

    def drop(self) -> asyncio.Task[None] | None:
        """Forget every body and give its bytes back; a fetch still running is cancelled (returned,
        for a caller that can wait for the cancellation)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        self._slots = {}
        self._budget.give_back(self._pending + sum(self._held.values()))
        self._pending = 0
        self._held.clear()
        return task

    async def _fill(
        self,
        slots: dict[int, asyncio.Future[bytes | None]],
        items: Items,
        transform: Callable[[bytes, bool], bytes] | None,
    ) -> None:
        try:
            async with contextlib.aclosing(items):
                async for uid, data, crlf in items:
                    slot = slots.get(uid)
                    if slot is None or slot.done():
                        continue
                    size = min(len(data), self._pending)  # its bytes move from pending to held
                    self._pending -= size
                    self._held[uid] = size
                    slot.set_result(transform(data, crlf) if transform is not None else data)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the commands fetch what did not arrive on their own (and answer errors)
            log.debug("%s ended early: %r", self._name, e)
        finally:
            if self._task is not None and self._task is asyncio.current_task():
                # what was reserved and did not arrive goes back now, not when the session ends
                self._budget.give_back(self._pending)
                self._pending = 0
            for slot in slots.values():
                if not slot.done():
                    slot.set_result(None)
