"""Connection limits and the AUTH-failure brake, per client IP, in this process.

Frontends are stateless and may run as several replicas; these limits are per
replica, which is what protects one process's memory and the mailstore's
password hashing from one noisy client.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable


class ConnectionLimiter:
    """Counts open connections in total and per IP; `acquire` refuses beyond the limits."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = defaultdict(int)

    def acquire(self, ip: str) -> bool:
        if self.max_total and self.total >= self.max_total:
            return False
        if self.max_per_ip and self._per_ip[ip] >= self.max_per_ip:
            return False
        self.total += 1
        self._per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    def count(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)


class AuthFailureLimiter:
    """Failed AUTHs per IP in a sliding window.

    Each failure is answered only after `delay()` seconds (doubling per recent
    failure, capped), which makes guessing slow; after `max_failures` in the window
    the IP is refused outright until the oldest failure ages out."""

    MAX_DELAY = 10.0

    def __init__(
        self,
        max_failures: int,
        window: float,
        base_delay: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.base_delay = base_delay
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str) -> deque[float]:
        failures = self._failures.get(ip)
        if failures is None:
            return deque()
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[ip]
        return failures

    def blocked(self, ip: str) -> bool:
        return bool(self.max_failures) and len(self._recent(ip)) >= self.max_failures

    def record_failure(self, ip: str) -> float:
        """Remember a failure; returns how long to wait before answering it."""
        failures = self._recent(ip)
        failures.append(self._clock())
        self._failures[ip] = failures
        return min(self.base_delay * 2 ** (len(failures) - 1), self.MAX_DELAY)
