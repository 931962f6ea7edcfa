"""The in-flight byte budget: how much message content all SMTP sessions of a process may hold.

A DATA or BDAT body is held in memory from its first line until the mailstore has stored it.
Without a bound, a few clients sending large messages at once (no login needed on port 25) take
the process's memory with them. Each transaction reserves the budget as its content arrives;
when the budget is spent, the transaction keeps reading (the client's bytes must be consumed,
RFC 5321 §4.2.5), keeps nothing and is answered 452 4.3.1, and its share goes back at once so
the others can finish. Reservations are taken in steps so that a line costs one comparison,
and an eighth of the budget is kept for small messages (see InflightBudget.take).
"""

from __future__ import annotations

STEP = 1024 * 1024  # reserved at a time (the last step of a transaction may be smaller)


class InflightBudget:
    """Bytes of message content held across all sessions of this process; 0 = unbounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def free(self) -> int:
        return max(self.limit - self.used, 0) if self.limit else 1 << 62

    def take(self, amount: int, beyond_first_step: bool = False) -> bool:
        """The last eighth of the budget is only for a transaction's first STEP, so that large
        messages filling the budget still leave room for the many small ones."""
        limit = self.limit - self.limit // 8 if beyond_first_step else self.limit
        if self.limit and self.used + amount > limit:
            return False
        self.used += amount
        return True

    def give_back(self, amount: int) -> None:
        self.used -= amount


class Reservation:
    """One transaction's share of the budget."""

    def __init__(self, budget: InflightBudget) -> None:
        self.budget = budget
        self.held = 0

    def cover(self, total: int) -> bool:
        """Hold at least `total` bytes; False (and nothing more held) when the budget cannot."""
        if total <= self.held:
            return True
        need = total - self.held
        step = -(-need // STEP) * STEP
        large = total > STEP
        if self.budget.take(step, large):
            self.held += step
            return True
        if step != need and self.budget.take(need, large):  # the last bytes of the budget
            self.held += need
            return True
        return False

    def release(self) -> None:
        """Give everything back (idempotent: safe on every path out of a transaction)."""
        if self.held:
            self.budget.give_back(self.held)
            self.held = 0
