"""Sequence sets (RFC 3501 §9, RFC 5182)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.services.imap.protocol import SequenceSet
from mailstack.services.imap.protocol.grammar import GrammarError


def test_forms() -> None:
    s = SequenceSet.parse("1,3:5,9:7,*,12:*")
    assert s.items == ((1, 1), (3, 5), (9, 7), (None, None), (12, None))
    assert s.ranges(20) == [(1, 1), (3, 5), (7, 9), (12, 20)]
    assert s.ranges(10) == [(1, 1), (3, 5), (7, 12)]  # 12:* with * = 10 is 10:12
    assert list(s.iter(10)) == [1, 3, 4, 5, 7, 8, 9, 10]
    assert s.contains(4, 20) and not s.contains(6, 20) and s.contains(20, 20) and not s.contains(21, 20)
    assert bytes(s) == b"1,3:5,9:7,*,12:*"


def test_saved_result() -> None:
    saved = SequenceSet.parse("$")
    assert saved.saved and bytes(saved) == b"$"
    with pytest.raises(ValueError):
        saved.ranges(5)


def test_iter_is_bounded_by_largest() -> None:
    assert list(SequenceSet.parse("1:4294967295").iter(3)) == [1, 2, 3]
    assert list(SequenceSet.parse("1:*").iter(0)) == []


@pytest.mark.parametrize("text", ["", "0", "1:", ":1", "1,", "1,,2", "a", "4294967296", "1:0", "$,1", "-1"])
def test_invalid(text: str) -> None:
    with pytest.raises(GrammarError):
        SequenceSet.parse(text)


@given(
    st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60) | st.none()), min_size=1, max_size=6), st.integers(0, 70)
)
def test_ranges_agree_with_brute_force(items: list[tuple[int, int | None]], largest: int) -> None:
    s = SequenceSet(tuple(items))
    expected: set[int] = set()
    for a, b in items:
        lo, hi = sorted((a, largest if b is None else b))
        expected.update(range(lo, hi + 1))
    assert all(s.contains(n, largest) == (n in expected) for n in range(0, 80))
    assert list(s.iter(largest)) == sorted(n for n in expected if 1 <= n <= largest)
    assert SequenceSet.parse(bytes(s)) == s
