"""Limits that protect the server from one client: connections per IP and per account, and command
rate per connection. Failed logins are counted by the mailstore for all protocols (ADR 0011)."""

from __future__ import annotations

import time
from collections import Counter

# Before login a client needs literals only for LOGIN's user name and password: a larger one is
# refused without the "+" (RFC 7888 §4), so an anonymous connection can't make us buffer a message.
PREAUTH_MAX_LITERAL = 8 * 1024


class ConnectionLimits:
    """Counts of open connections (per IP) and of authenticated sessions (per account)."""

    def __init__(self, max_total: int, max_per_ip: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_per_user = max_per_user
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.per_user: Counter[str] = Counter()

    def open(self, ip: str) -> tuple[str, str] | None:
        """Count a new connection; returns why it is refused, (metric label, text for the client),
        and then nothing was counted."""
        if self.total >= self.max_total:
            return "total", "too many connections"
        if self.per_ip[ip] >= self.max_per_ip:
            return "per_ip", "too many connections from your address"
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
