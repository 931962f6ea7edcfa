"""Limits that protect the server from one client: connections per IP and per account, command
rate per connection, and authentication failures per IP (slowed, then refused)."""

from __future__ import annotations

import time
from collections import Counter, deque


class ConnectionLimits:
    """Counts of open connections (per IP) and of authenticated sessions (per account)."""

    def __init__(self, max_total: int, max_per_ip: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_per_user = max_per_user
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.per_user: Counter[str] = Counter()

    def open(self, ip: str) -> str | None:
        """Count a new connection; returns why it is refused (then nothing was counted)."""
        if self.total >= self.max_total:
            return "too many connections"
        if self.per_ip[ip] >= self.max_per_ip:
            return "too many connections from your address"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def close(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def login(self, account: str) -> bool:
        if self.per_user[account] >= self.max_per_user:
            return False
        self.per_user[account] += 1
        return True

    def logout(self, account: str) -> None:
        self.per_user[account] -= 1
        if self.per_user[account] <= 0:
            del self.per_user[account]


class AuthThrottle:
    """Failed logins per IP in a sliding window: each failure is answered later than the previous
    one (doubling from base_delay), and past max_failures the IP is refused until the window moves."""

    def __init__(self, base_delay: float, max_failures: int, window: float = 300.0, max_delay: float = 10.0) -> None:
        self.base_delay = base_delay
        self.max_failures = max_failures
        self.window = window
        self.max_delay = max_delay
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str, now: float) -> deque[float]:
        times = self._failures.setdefault(ip, deque())
        while times and times[0] < now - self.window:
            times.popleft()
        return times

    def blocked(self, ip: str) -> bool:
        times = self._recent(ip, time.monotonic())
        if not times:
            self._failures.pop(ip, None)
        return len(times) >= self.max_failures

    def failure(self, ip: str) -> float:
        """Record a failure; returns how long to wait before answering it."""
        times = self._recent(ip, time.monotonic())
        times.append(time.monotonic())
        return min(self.max_delay, self.base_delay * 2 ** (len(times) - 1))

    def success(self, ip: str) -> None:
        self._failures.pop(ip, None)


class CommandRate:
    """A token bucket: `rate` commands per second sustained, bursts of 5x. A client that goes
    faster is slowed down (its next command waits), not disconnected."""

    def __init__(self, rate: float) -> None:
        self.rate = max(rate, 1.0)
        self.capacity = self.rate * 5
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def delay(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
