"""Update contexts (RFC 5267 §4.3): REMOVEFROM and ADDTO pairs, applied by a client as §4.3.3-4
say, take the old result to the new one, in order (checked over random results)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from mailstack.services.imap.contexts import addition_pairs, removal_pairs


def apply_removals(result: list[int], pairs: list[tuple[int, list[int]]]) -> list[int]:
    out = list(result)
    for position, uids in pairs:
        if position == 0:  # §4.3.4: wherever they are
            out = [u for u in out if u not in uids]
            continue
        assert out[position - 1 : position - 1 + len(uids)] == uids  # the set starts at the position
        del out[position - 1 : position - 1 + len(uids)]
    return out


def apply_additions(result: list[int], pairs: list[tuple[int, list[int]]]) -> list[int]:
    out = list(result)
    for position, uids in pairs:
        if position == 0:  # §4.3.3: the client may keep mailbox order
            out = sorted(out + uids)
            continue
        out[position - 1 : position - 1] = uids
    return out


@st.composite
def results(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """An old and a new sorted result: some members leave, new ones arrive anywhere, the order of
    those that stay is kept (sort keys never change)."""
    universe = draw(st.permutations(range(1, 30)))
    old = [u for u in universe if draw(st.booleans())]
    stay = {u for u in old if draw(st.booleans())}
    new = [u for u in universe if u in stay or (u not in old and draw(st.booleans()))]
    return old, new


@settings(max_examples=300, deadline=None)
@given(results())
def test_sorted_context_pairs_rebuild_the_new_result(pair: tuple[list[int], list[int]]) -> None:
    old, new = pair
    removed = removal_pairs(old, set(new), sorted_context=True)
    kept = apply_removals(old, removed)
    assert kept == [u for u in new if u in set(old)]
    assert apply_additions(kept, addition_pairs(set(kept), new, sorted_context=True)) == new


@settings(max_examples=200, deadline=None)
@given(results())
def test_search_context_pairs_use_position_zero(pair: tuple[list[int], list[int]]) -> None:
    old, new = sorted(pair[0]), sorted(pair[1])
    removed = removal_pairs(old, set(new), sorted_context=False)
    assert all(position == 0 for position, _ in removed) and len(removed) <= 1
    kept = apply_removals(old, removed)
    added = addition_pairs(set(kept), new, sorted_context=False)
    assert all(position == 0 for position, _ in added) and len(added) <= 1
    assert apply_additions(kept, added) == new


def test_consecutive_changes_share_a_pair() -> None:
    assert removal_pairs([1, 2, 3, 4], {1, 4}, sorted_context=True) == [(2, [2, 3])]
    assert addition_pairs({1, 4}, [1, 2, 3, 4, 5], sorted_context=True) == [(2, [2, 3]), (5, [5])]
