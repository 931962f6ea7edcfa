"""Inclusive UID ranges as the metadata Protocol passes them: (first, last), last == 0 meaning "*".

RFC 3501 §9 (seq-range): "*" is the highest UID in use, and "n:m" equals "m:n"; so
"5:*" on a mailbox whose highest UID is 3 means 3:5 and still names UID 3.
"""

from bisect import bisect_right
from collections.abc import Sequence

# Above this many disjoint ranges a WHERE clause gets long; scan the bounding range instead.
MAX_SQL_RANGES = 40


def normalise(ranges: Sequence[tuple[int, int]], max_uid: int) -> list[tuple[int, int]]:
    """Resolve "*" (0) to max_uid, order each pair, then sort and merge overlapping/adjacent ranges."""
    pairs: list[tuple[int, int]] = []
    for first, last in ranges:
        first = first or max_uid
        last = last or max_uid
        if first > last:
            first, last = last, first
        first = max(first, 1)
        if last >= first:
            pairs.append((first, last))
    pairs.sort()
    merged: list[tuple[int, int]] = []
    for first, last in pairs:
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def contains(merged: Sequence[tuple[int, int]], uid: int) -> bool:
    """Whether uid lies in a list returned by normalise()."""
    i = bisect_right(merged, (uid, 2**63)) - 1
    return i >= 0 and merged[i][0] <= uid <= merged[i][1]


def sql_condition(merged: Sequence[tuple[int, int]], column: str = "uid") -> tuple[str, list[int], bool]:
    """(SQL condition, parameters, exact) for merged ranges; when not exact the caller filters with contains()."""
    if not merged:
        return "0", [], True
    if len(merged) > MAX_SQL_RANGES:
        return f"{column} BETWEEN ? AND ?", [merged[0][0], merged[-1][1]], False
    parts: list[str] = []
    params: list[int] = []
    for first, last in merged:
        parts.append(f"{column} BETWEEN ? AND ?")
        params += [first, last]
    return "(" + " OR ".join(parts) + ")", params, True
