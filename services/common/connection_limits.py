"""Open connections in total and per client IP, for one frontend process (SMTP, POP3).

The per-IP share keeps room under the total for other clients: one address that opens
connections as fast as it can fills its share, not the whole server.
"""

from __future__ import annotations

from collections import defaultdict


class ConnectionLimiter:
    """Counts open connections in total and per IP; `acquire` refuses beyond the limits (0 = none)."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = defaultdict(int)

    def refusal(self, ip: str) -> str | None:
        """Why a new connection from `ip` would be refused ("total", "per_ip"), or None."""
        if self.max_total and self.total >= self.max_total:
            return "total"
        if self.max_per_ip and self._per_ip.get(ip, 0) >= self.max_per_ip:
            return "per_ip"
        return None

    def acquire(self, ip: str) -> bool:
        if self.refusal(ip) is not None:
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
