"""IMAP mailbox name patterns (RFC 3501 §6.3.8, RFC 9051 §6.3.9): "*" matches zero or more
characters, "%" zero or more characters other than the hierarchy delimiter "/".

One implementation for every place that matches them (IMAP LIST, LSUB, LIST-EXTENDED's several
patterns, LIST-STATUS; the mailstore's ListMailboxes). Never a backtracking regex: `LIST "" "***x"`
once made one whose running time grew exponentially with the stars and froze the event loop. The
patterns are run as one bit-parallel automaton (Shift-And, one bit per pattern position), so a name
costs O(len(name)) big-integer steps of at most MAX_PATTERNS_BYTES bits, whatever the pattern.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

DELIMITER = "/"
MAX_PATTERN_BYTES = 1000  # one pattern (reference + mailbox); a mailbox name is at most 1,000 too
MAX_PATTERNS_BYTES = 4000  # all the patterns of one command together (LIST-EXTENDED takes a list)
WILDCARDS = "*%"


class PatternTooLongError(ValueError):
    pass


def check_lengths(patterns: Iterable[str]) -> None:
    """Raises PatternTooLongError past MAX_PATTERN_BYTES for one pattern or MAX_PATTERNS_BYTES in all."""
    total = 0
    for pattern in patterns:
        size = len(pattern.encode("utf-8", "surrogatepass"))
        if size > MAX_PATTERN_BYTES:
            raise PatternTooLongError(f"mailbox pattern longer than {MAX_PATTERN_BYTES} bytes")
        total += size
        if total > MAX_PATTERNS_BYTES:
            raise PatternTooLongError(f"mailbox patterns longer than {MAX_PATTERNS_BYTES} bytes together")


def _tokens(pattern: str) -> list[str]:
    """The pattern with each run of wildcards collapsed to one: "*" if the run holds a "*" (which
    matches whatever "%" does), else "%". An equivalent pattern with no wildcard after a wildcard."""
    out: list[str] = []
    for ch in pattern:
        if ch in WILDCARDS and out and out[-1] in WILDCARDS:
            if ch == "*":
                out[-1] = "*"
            continue
        out.append(ch)
    return out


class MailboxPatterns:
    """Several patterns as one automaton; `matches(name)` is whether any of them matches all of name.

    Each pattern of k tokens owns bits base..base+k: bit base+i is "matched the tokens before i",
    bit base+k "matched the whole pattern". Wildcards come one at a time (see _tokens), so the
    zero-length match of a wildcard is a single shift."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        check_lengths(patterns)
        self._exact = frozenset(p for p in patterns if not any(w in p for w in WILDCARDS))
        literal: dict[str, int] = {}
        star = percent = start = accept = 0
        bit = 0
        for pattern in dict.fromkeys(p for p in patterns if p not in self._exact):
            start |= 1 << bit
            for token in _tokens(pattern):
                if token == "*":
                    star |= 1 << bit
                elif token == "%":
                    percent |= 1 << bit
                else:
                    literal[token] = literal.get(token, 0) | 1 << bit
                bit += 1
            accept |= 1 << bit
            bit += 1
        self._literal = literal
        self._star = star
        self._percent = percent
        self._wild = star | percent
        self._start = self._closure(start)
        self._accept = accept

    def _closure(self, states: int) -> int:
        # a wildcard may match nothing: being before it is also being after it
        return states | (states & self._wild) << 1

    def matches(self, name: str) -> bool:
        if name in self._exact:
            return True
        states = self._start
        if not states:
            return False
        literal, star, percent = self._literal, self._star, self._percent
        for ch in name:
            moved = (states & literal.get(ch, 0)) << 1 | states & star
            if ch != DELIMITER:
                moved |= states & percent
            states = self._closure(moved)
            if not states:
                return False
        return bool(states & self._accept)


@lru_cache(maxsize=256)
def compile_patterns(patterns: tuple[str, ...]) -> MailboxPatterns:
    """The automaton for `patterns`, cached: one LIST matches every name of the account with it."""
    return MailboxPatterns(patterns)


def matches(pattern: str, name: str) -> bool:
    """Whether the one `pattern` matches `name` (raises PatternTooLongError for an over-long pattern)."""
    return compile_patterns((pattern,)).matches(name)
