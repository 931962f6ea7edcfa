"""The event bus of `mailstack serve` worker processes on one host (ADR 0043).

Each worker's mailstore publishes to its own subscribers, as the in-process bus does, and sends the
event as one unix datagram to each sibling's socket in a private folder of the data dir
(`DATA_DIR/workers/N.sock`, mode 0700 folder); each worker reads its socket and hands what arrives
to its own subscribers. Events are hints (ADR 0015): a datagram lost to a full socket buffer or a
sibling restarting costs a session a poll interval at worst, never a wrong mailbox. Every datagram
is bounded (MAX_DATAGRAM); one too large, not JSON or not an event is dropped and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import get_args

from mailstack.storage.events.base import ChangeEvent, EventKind
from mailstack.storage.events.memory import MemoryEventBus
from mailstack.storage.events.queue import DEFAULT_QUEUE_LIMIT

log = logging.getLogger("mailstack.events.siblings")

MAX_DATAGRAM = 4096  # bytes of one event; a larger one is sent without its UIDs (a hint still)
MAX_FIELD = 1024  # characters of an account or mailbox name in an event that arrives
READS_PER_WAKEUP = 64  # datagrams read per wake-up before the loop serves others again
_KINDS = frozenset(get_args(EventKind)) - {"resync"}  # resync is a subscriber's own, never sent


def socket_path(folder: Path, worker: int) -> Path:
    return folder / f"{worker}.sock"


def encode(event: ChangeEvent) -> bytes:
    """One datagram: the event's JSON, without its UIDs when they would not fit."""
    data = event.to_json()
    if len(data) > MAX_DATAGRAM:
        data = ChangeEvent(event.account, event.mailbox, event.kind, (), event.modseq, event.uidvalidity).to_json()
    if len(data) > MAX_DATAGRAM:
        raise ValueError("event too large for a datagram")  # names are bounded far below this
    return data


def decode(data: bytes) -> ChangeEvent:
    """The event of a datagram; ValueError for anything else."""
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"datagram of more than {MAX_DATAGRAM} bytes")
    try:
        event = ChangeEvent.from_json(data)
    except (KeyError, TypeError, AttributeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"not an event: {err.__class__.__name__}") from None
    if event.kind not in _KINDS:
        raise ValueError("not an event: unknown kind")
    if not isinstance(event.account, str) or not isinstance(event.mailbox, str):
        raise ValueError("not an event: account and mailbox must be text")
    if not event.account or len(event.account) > MAX_FIELD or len(event.mailbox) > MAX_FIELD:
        raise ValueError("not an event: account or mailbox empty or too long")
    if not all(isinstance(u, int) and u > 0 for u in event.uids):
        raise ValueError("not an event: UIDs must be positive numbers")
    return event


class SiblingEventBus(MemoryEventBus):
    """The in-process bus of one worker, plus datagrams to and from its siblings."""

    def __init__(self, folder: Path, me: int, count: int, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        super().__init__(queue_limit)
        self._loop = asyncio.get_running_loop()
        self._path = socket_path(folder, me)
        self._peers = [str(socket_path(folder, i)) for i in range(count) if i != me]
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()  # a socket left by this worker's previous run
            self._sock.bind(str(self._path))
            os.chmod(self._path, 0o600)
        except BaseException:
            self._sock.close()
            raise
        self._loop.add_reader(self._sock.fileno(), self._read)
        self.dropped = 0  # datagrams refused on arrival (too large, not an event)
        self.unsent = 0  # sends that failed (a sibling's buffer full, a sibling not there)

    async def publish(self, event: ChangeEvent) -> None:
        await super().publish(event)
        data = encode(event)
        for peer in self._peers:
            try:
                self._sock.sendto(data, peer)
            except OSError as err:  # EAGAIN (its buffer is full), ENOENT/ECONNREFUSED (restarting): a lost hint
                self.unsent += 1
                log.debug("event not sent to a sibling worker", extra={"peer": peer, "error": repr(err)})

    def _read(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data = self._sock.recv(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.warning("sibling event socket failed", extra={"error": repr(err)})
                return
            try:
                event = decode(data)
            except ValueError as err:
                self.dropped += 1
                log.warning("dropped a datagram on the worker event socket", extra={"error": str(err)})
                continue
            self.fan_out(event)

    async def close(self) -> None:
        if self._sock.fileno() >= 0:  # closing twice is allowed
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        await super().close()
