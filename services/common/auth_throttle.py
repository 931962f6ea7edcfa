"""The one brake on password guessing (ADR 0011): login attempts per client IP and per target
account in a sliding window, for every protocol (IMAP, POP3, SMTP AUTH) and the Send API.

The mailstore holds it, because every login of every frontend replica ends in its Authenticate
call. An attempt takes its slot when it starts, before the password is hashed, so a burst of
parallel logins is counted as it arrives, not after the answers come back; a success gives the
slot back and forgets only the failures of that same account from that same IP (a login to one's
own account does not wipe the guesses at someone else's).

Failures are also written to the metadata database (`shared`, ADR 0046) and read back at each
attempt, so every mailstore process on that database (replicas, `serve` workers) counts what the
others refused: N processes no longer give an attacker N budgets. Attempts in progress stay per
process (they last a password hash), so a burst spread over N processes meets N x the limit in
flight at most, and then the shared failures.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class SharedFailures(Protocol):
    """Where every process that checks logins against one database counts failures (the
    metadata store; ADR 0046)."""

    async def auth_failures(self, ip: str, account: str, window: float) -> tuple[int, int, int]: ...

    async def record_auth_failure(self, ip: str, account: str, window: float) -> None: ...

    async def forget_auth_failures(self, ip: str, account: str) -> None: ...


@dataclass(slots=True)
class _Counts:
    failures: deque[tuple[float, str]] = field(default_factory=deque)  # (time, the other key)
    in_flight: int = 0

    def expire(self, horizon: float) -> None:
        while self.failures and self.failures[0][0] <= horizon:
            self.failures.popleft()

    def used(self) -> int:
        return self.in_flight + len(self.failures)

    def forget(self, other: str) -> None:
        if any(key == other for _, key in self.failures):
            self.failures = deque(item for item in self.failures if item[1] != other)


def address_key(ip: str) -> str:
    """What counts as one client: an IPv4 address, or an IPv6 /64 (one subscriber's network, whose
    2^64 addresses would otherwise each get their own budget)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Throttled(Exception):
    """Too many login attempts from this IP or at this account; try again later."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"too many login attempts {scope}, try again later")
        self.scope = scope  # "from this address" or "for this account" (for logs)


class Busy(Throttled):
    """The limit is reached only by attempts still in progress: `acquire` waits for one to end."""


QUEUE_WAIT = 15.0  # seconds an attempt may wait for a slot held by attempts in progress
MAX_WAITING = 1000  # attempts waiting at once, all clients together; more are refused at once


class Attempt:
    """One login attempt holding its slot; `succeeded()` or `failed()` ends it (once)."""

    def __init__(self, throttle: AuthThrottle, ip: str, account: str, shared_pair: int = 0) -> None:
        self._throttle = throttle
        self.ip = ip
        self.account = account
        self.shared_pair = shared_pair  # failures of this pair the database held when it began
        self._open = True

    def succeeded(self) -> None:
        if self._open:
            self._open = False
            self._throttle._finish(self, success=True)

    def failed(self) -> None:
        if self._open:
            self._open = False
            self._throttle._finish(self, success=False)

    def abandoned(self) -> None:
        """Ended without an answer (an error, a cancelled call): the slot goes back, nothing is counted."""
        if self._open:
            self._open = False
            self._throttle._release(self)


class AuthThrottle:
    """Attempts in progress plus failures within `window` seconds, per IP and per account.

    `begin` refuses (raises Throttled) when either count has reached its limit (0 = no limit).
    Everything happens on the event loop between awaits, so a check and its reservation are one
    step: 150 parallel logins meet a limit of 15 as 15 slots, not as 150 checks of an empty count."""

    def __init__(
        self,
        max_per_ip: int,
        max_per_account: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedFailures | None = None,
    ) -> None:
        self.max_per_ip = max_per_ip
        self.max_per_account = max_per_account
        self.window = window
        self._clock = clock
        self._shared = shared
        self._ips: dict[str, _Counts] = {}
        self._accounts: dict[str, _Counts] = {}
        self._swept = clock()
        self._waiting = 0
        self._changed = asyncio.Event()

    def _counts(self, table: dict[str, _Counts], key: str) -> _Counts:
        counts = table.get(key)
        if counts is None:
            counts = table[key] = _Counts()
        counts.expire(self._clock() - self.window)
        return counts

    def _tidy(self, table: dict[str, _Counts], key: str) -> None:
        counts = table.get(key)
        if counts is not None and not counts.used():
            del table[key]

    def begin(self, ip: str, account: str, elsewhere: tuple[int, int, int] = (0, 0, 0)) -> Attempt:
        """Reserve a slot for one attempt by `ip` at `account` (a normalised login name; "" for
        a credential that names no account, such as a Send token: then only the IP counts).
        `elsewhere`: the shared failures (from the IP, at the account, of the pair), which include
        this process's own once written: the larger of the two counts is the one that holds."""
        self._sweep()
        ip = address_key(ip)
        tables = self._tables(ip, account)
        for (table, key), limit, shared, scope in zip(
            tables,
            (self.max_per_ip, self.max_per_account),
            elsewhere,
            ("from this address", "for this account"),
            strict=False,
        ):
            counts = self._counts(table, key)
            failures = max(len(counts.failures), shared)
            if limit and counts.in_flight + failures >= limit:
                for other_table, other_key in tables:
                    self._tidy(other_table, other_key)
                raise Throttled(scope) if failures >= limit else Busy(scope)
        for table, key in tables:
            self._counts(table, key).in_flight += 1
        return Attempt(self, ip, account, elsewhere[2])

    async def acquire(self, ip: str, account: str, wait: float = QUEUE_WAIT) -> Attempt:
        """`begin`, but an attempt that finds the slots taken only by attempts in progress waits
        (up to `wait` seconds) for one of them to end instead of being refused: a hundred users
        behind one NAT logging in at once are served in turn, while parallel guesses still meet
        the limit as slots (the first ones fail, and the ones waiting are then refused)."""
        deadline = time.monotonic() + wait
        while True:
            elsewhere = await self._elsewhere(ip, account)
            try:
                return self.begin(ip, account, elsewhere)
            except Busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._waiting >= MAX_WAITING:
                    raise
            self._waiting += 1
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass
            finally:
                self._waiting -= 1

    async def _elsewhere(self, ip: str, account: str) -> tuple[int, int, int]:
        if self._shared is None:
            return 0, 0, 0
        return await self._shared.auth_failures(address_key(ip), account, self.window)

    async def tell_others(self, attempt: Attempt, *, success: bool) -> None:
        """After `failed()` or `succeeded()`: the database learns the failure, or forgets the pair's
        failures it holds. Awaited before the answer, so the next attempt anywhere counts it. A
        write that fails is logged: this process still counts the failure itself."""
        if self._shared is None or (success and (not attempt.account or not attempt.shared_pair)):
            return
        try:
            if success:
                await self._shared.forget_auth_failures(attempt.ip, attempt.account)
            else:
                await self._shared.record_auth_failure(attempt.ip, attempt.account, self.window)
        except Exception:
            log.warning("login failure not shared with other processes", exc_info=True)

    def _wake(self) -> None:
        """An attempt ended: every waiting one looks again (each takes a slot or waits on)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _sweep(self) -> None:
        """Once per window, drop the entries of clients that failed once and never came back (the
        tables would otherwise grow with every scanner's address)."""
        now = self._clock()
        if now - self._swept < self.window:
            return
        self._swept = now
        for table in (self._ips, self._accounts):
            for key in list(table):
                table[key].expire(now - self.window)
                self._tidy(table, key)

    def _tables(self, ip: str, account: str) -> list[tuple[dict[str, _Counts], str]]:
        return [(self._ips, ip), (self._accounts, account)] if account else [(self._ips, ip)]

    def blocked(self, ip: str) -> bool:
        """Whether a new attempt from `ip` would be refused whatever the account."""
        counts = self._ips.get(address_key(ip))
        if counts is None:
            return False
        counts.expire(self._clock() - self.window)
        return bool(self.max_per_ip) and counts.used() >= self.max_per_ip

    def _release(self, attempt: Attempt) -> None:
        for table, key in self._tables(attempt.ip, attempt.account):
            self._counts(table, key).in_flight -= 1
            self._tidy(table, key)
        self._wake()

    def _finish(self, attempt: Attempt, *, success: bool) -> None:
        now = self._clock()
        for (table, key), other in zip(
            self._tables(attempt.ip, attempt.account), (attempt.account, attempt.ip), strict=False
        ):
            counts = self._counts(table, key)
            counts.in_flight -= 1
            if not success:
                counts.failures.append((now, other))
            elif attempt.account:  # the owner typed it right at last: forget this pair's typos
                counts.forget(other)  # (a credential without an account, a Send token, forgets nothing)
            self._tidy(table, key)
        self._wake()

    def failures(self, ip: str) -> int:
        """Failures from `ip` still in the window (tests, logs)."""
        counts = self._ips.get(address_key(ip))
        if counts is None:
            return 0
        counts.expire(self._clock() - self.window)
        return len(counts.failures)
