"""The shared login throttle (ADR 0011) on its own, with a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest
from mailstack.services.common.auth_throttle import AuthThrottle, Busy, Throttled


def throttle(per_ip: int = 3, per_account: int = 0, window: float = 60.0) -> tuple[AuthThrottle, list[float]]:
    now = [1000.0]
    return AuthThrottle(per_ip, per_account, window, clock=lambda: now[0]), now


def test_attempts_in_progress_take_their_slot_before_they_finish() -> None:
    limiter, _ = throttle(per_ip=3)
    attempts = [limiter.begin("ip", f"user{i}") for i in range(3)]
    with pytest.raises(Throttled, match="from this address"):
        limiter.begin("ip", "user9")
    attempts[0].succeeded()  # a success gives its slot back
    limiter.begin("ip", "user9")


async def test_attempts_waiting_for_slots_in_progress_are_served_in_turn() -> None:
    """Many users behind one address logging in at once: nobody is refused while no one failed."""
    limiter, _ = throttle(per_ip=3)
    held = [limiter.begin("ip", f"user{i}") for i in range(3)]
    waiting = [asyncio.create_task(limiter.acquire("ip", f"late{i}", wait=5)) for i in range(6)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiting)  # the slots are all in progress: they wait
    for attempt in held:
        attempt.succeeded()
    first = await asyncio.wait_for(asyncio.gather(*waiting[:3]), 5)  # three took the freed slots
    assert not any(t.done() for t in waiting[3:])
    for attempt in first:
        attempt.succeeded()
    for attempt in await asyncio.wait_for(asyncio.gather(*waiting[3:]), 5):
        attempt.succeeded()


async def test_parallel_guesses_still_meet_the_limit_as_slots() -> None:
    """The ones waiting are refused once the attempts in progress have failed: only `limit` are checked."""
    limiter, _ = throttle(per_ip=3)
    held = [limiter.begin("ip", "bob") for _ in range(3)]
    waiting = [asyncio.create_task(limiter.acquire("ip", "bob", wait=5)) for _ in range(10)]
    await asyncio.sleep(0)
    for attempt in held:
        attempt.failed()
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert all(type(r) is Throttled for r in results), results


async def test_a_wait_is_bounded() -> None:
    limiter, _ = throttle(per_ip=1)
    limiter.begin("ip", "alice")  # never ends
    with pytest.raises(Busy):
        await limiter.acquire("ip", "bob", wait=0.2)


def test_failures_count_until_the_window_passes() -> None:
    limiter, now = throttle(per_ip=2, window=60)
    for _ in range(2):
        limiter.begin("ip", "bob").failed()
    assert limiter.blocked("ip") and not limiter.blocked("other")
    with pytest.raises(Throttled):
        limiter.begin("ip", "alice")
    now[0] += 61
    assert not limiter.blocked("ip")
    limiter.begin("ip", "alice").succeeded()
    assert limiter.failures("ip") == 0


def test_a_success_forgets_only_its_own_accounts_failures_from_that_ip() -> None:
    limiter, _ = throttle(per_ip=5)
    limiter.begin("ip", "alice").failed()
    limiter.begin("ip", "bob").failed()
    limiter.begin("ip", "bob").failed()
    limiter.begin("ip", "alice").succeeded()
    assert limiter.failures("ip") == 2  # bob's stay


def test_the_account_limit_holds_across_addresses() -> None:
    limiter, _ = throttle(per_ip=0, per_account=2)
    limiter.begin("ip1", "bob").failed()
    limiter.begin("ip2", "bob").failed()
    with pytest.raises(Throttled, match="for this account"):
        limiter.begin("ip3", "bob")
    limiter.begin("ip3", "alice").succeeded()


def test_an_abandoned_attempt_counts_nothing_and_a_token_success_forgets_nothing() -> None:
    limiter, _ = throttle(per_ip=2)
    limiter.begin("ip", "bob").abandoned()
    assert limiter.failures("ip") == 0 and not limiter.blocked("ip")
    limiter.begin("ip", "").failed()
    attempt = limiter.begin("ip", "")
    attempt.succeeded()
    attempt.failed()  # ended once: ignored
    assert limiter.failures("ip") == 1


def test_zero_means_no_limit() -> None:
    limiter, _ = throttle(per_ip=0, per_account=0)
    for _ in range(1000):
        limiter.begin("ip", "bob").failed()
    assert not limiter.blocked("ip")


def test_an_ipv6_64_is_one_client() -> None:
    limiter, _ = throttle(per_ip=2)
    limiter.begin("2001:db8:1:2::1", "bob").failed()
    limiter.begin("2001:db8:1:2:ffff::9", "bob").failed()
    assert limiter.blocked("2001:db8:1:2::77")
    assert not limiter.blocked("2001:db8:1:3::1")
    limiter.begin("::ffff:192.0.2.1", "bob").failed()  # a mapped IPv4 address is that address
    assert limiter.failures("192.0.2.1") == 1


def test_clients_that_never_come_back_are_forgotten() -> None:
    limiter, now = throttle(per_ip=5, per_account=5, window=60)
    for i in range(100):
        limiter.begin(f"192.0.2.{i}", f"user{i}").failed()
    now[0] += 61
    limiter.begin("198.51.100.1", "alice").succeeded()
    assert len(limiter._ips) == 0 and len(limiter._accounts) == 0


class SharedTable:
    """The database's failure table as the throttles of several processes see it (ADR 0046)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.writes = 0
        self.broken = False

    async def auth_failures(self, ip: str, account: str, window: float) -> tuple[int, int, int]:
        by_account = sum(1 for _, a in self.rows if account and a == account)
        return sum(1 for i, _ in self.rows if i == ip), by_account, self.rows.count((ip, account)) if account else 0

    async def record_auth_failure(self, ip: str, account: str, window: float) -> None:
        self.writes += 1
        if self.broken:
            raise OSError("database gone")
        self.rows.append((ip, account))

    async def forget_auth_failures(self, ip: str, account: str) -> None:
        self.writes += 1
        self.rows = [row for row in self.rows if row != (ip, account)]


def processes(table: SharedTable, count: int, per_ip: int = 3, per_account: int = 0) -> list[AuthThrottle]:
    return [AuthThrottle(per_ip, per_account, 60.0, shared=table) for _ in range(count)]


async def fail(limiter: AuthThrottle, ip: str, account: str) -> None:
    attempt = await limiter.acquire(ip, account, wait=0)
    attempt.failed()
    await limiter.tell_others(attempt, success=False)


async def test_failures_in_one_process_refuse_the_next_attempt_in_another() -> None:
    table = SharedTable()
    a, b = processes(table, 2, per_ip=3, per_account=4)
    await fail(a, "192.0.2.1", "victim")
    await fail(b, "192.0.2.1", "victim")
    await fail(a, "192.0.2.1", "victim")
    with pytest.raises(Throttled, match="from this address"):
        await b.acquire("192.0.2.1", "other", wait=0)  # three guesses in all, whichever process took them
    await fail(b, "192.0.2.2", "victim")  # another address, the same account: the fourth at it
    with pytest.raises(Throttled, match="for this account"):
        await a.acquire("192.0.2.3", "victim", wait=0)
    # an IPv6 client is its /64 in the table too
    await fail(a, "2001:db8::1", "x")
    assert table.rows[-1] == ("2001:db8::/64", "x")


async def test_the_owner_logging_in_anywhere_forgets_only_its_pair_and_others_write_nothing() -> None:
    table = SharedTable()
    a, b = processes(table, 2, per_ip=5)
    await fail(a, "192.0.2.1", "owner")
    await fail(a, "192.0.2.1", "someone")
    attempt = await b.acquire("192.0.2.1", "owner", wait=0)
    attempt.succeeded()
    await b.tell_others(attempt, success=True)
    assert table.rows == [("192.0.2.1", "someone")]  # the typo is forgotten, the guess stays
    writes = table.writes
    for _ in range(3):  # ordinary logins cost no write: the table held nothing of their pair
        attempt = await a.acquire("192.0.2.5", "owner", wait=0)
        attempt.succeeded()
        await a.tell_others(attempt, success=True)
    assert table.writes == writes


async def test_a_failure_the_table_cannot_take_still_counts_here() -> None:
    table = SharedTable()
    (a,) = processes(table, 1, per_ip=2)
    table.broken = True
    await fail(a, "192.0.2.1", "x")  # logged, not raised: the client gets its ordinary failure
    await fail(a, "192.0.2.1", "x")
    with pytest.raises(Throttled):
        await a.acquire("192.0.2.1", "x", wait=0)
    assert table.rows == []
