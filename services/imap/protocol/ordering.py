"""SORT and THREAD arguments (RFC 5256 §4, RFC 5957 §3 DISPLAYFROM/DISPLAYTO, RFC 5267 §3 ESORT's
RETURN options). Pure grammar: which keys, algorithms and charsets are served is the handler's.

    sort            = ["UID" SP] "SORT" [SP sort-return-opts] SP sort-criteria SP search-criteria
    sort-criteria   = "(" sort-criterion *(SP sort-criterion) ")"
    sort-criterion  = ["REVERSE" SP] sort-key
    sort-key        = "ARRIVAL" / "CC" / "DATE" / "FROM" / "SIZE" / "SUBJECT" / "TO"
                      / "DISPLAYFROM" / "DISPLAYTO"
    search-criteria = charset 1*(SP search-key)
    thread          = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    sort-return-opts = "RETURN" SP "(" [sort-return-opt *(SP sort-return-opt)] ")"
"""

from __future__ import annotations

from dataclasses import dataclass

from .grammar import GrammarError, Reader
from .search import SearchKey, parse_search_keys

SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})
THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES"})
SORT_RETURNS = frozenset({"MIN", "MAX", "ALL", "COUNT"})  # RFC 5267 §3 (ESEARCH's, RFC 4731 §3.1)
# RFC 5267 §4: CONTEXT=SEARCH and CONTEXT=SORT add these to SEARCH and SORT
CONTEXT_RETURNS = frozenset({"CONTEXT", "UPDATE", "PARTIAL"})
MAX_SORT_CRITERIA = 16  # nine keys, each once or reversed: more is a client bug


@dataclass(frozen=True, slots=True)
class SortCriterion:
    key: str
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class Sort:
    """`returns` is None for a plain SORT, else ESORT's RETURN options (empty: ALL)."""

    criteria: tuple[SortCriterion, ...]
    charset: str
    key: SearchKey
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL low:high (1-based, low <= high)


@dataclass(frozen=True, slots=True)
class Thread:
    algorithm: str
    charset: str
    key: SearchKey


@dataclass(frozen=True, slots=True)
class CancelUpdate:
    """CANCELUPDATE (RFC 5267 §4.3.5): the tags of the contexts to stop."""

    tags: tuple[str, ...]


def _criterion(r: Reader) -> SortCriterion:
    name = r.keyword()
    if name == "REVERSE":
        r.sp()
        name = r.keyword()
        if name not in SORT_KEYS:
            raise GrammarError(f"REVERSE must be followed by a sort key, not {name}")
        return SortCriterion(name, reverse=True)
    if name not in SORT_KEYS:
        raise GrammarError(f"unknown sort key {name}")
    return SortCriterion(name)


def _charset(r: Reader) -> str:
    # charset = atom / quoted; mandatory in SORT and THREAD (unlike SEARCH's CHARSET)
    if r.at_end():
        raise GrammarError("missing charset")
    raw = r.quoted() if r.peek() == 0x22 else r.atom()
    return raw.decode("ascii", "replace").upper()


def _search_criteria(r: Reader) -> tuple[str, SearchKey]:
    charset = _charset(r)
    if r.at_end():
        raise GrammarError("missing search criteria")
    r.sp()
    return charset, parse_search_keys(r)


def _partial_range(r: Reader) -> tuple[int, int]:
    # partial-range = nz-number ":" nz-number  (RFC 5267 §4.4: 500:400 is 400:500; no "*")
    first = r.nz_number()
    r.expect(b":", "':' in the PARTIAL range")
    last = r.nz_number()
    return min(first, last), max(first, last)


def optional_return(
    r: Reader, allowed: frozenset[str], command: str
) -> tuple[tuple[str, ...] | None, tuple[int, int] | None]:
    """`RETURN (...) SP` if it comes next (RFC 4731 §3.1, RFC 5256 via RFC 5267 §3): the options and
    PARTIAL range; (None, None) when there is none."""
    if not r.peek_keyword(b"RETURN"):
        return None, None
    r.pos += 6
    r.sp()
    returns, partial = parse_return_options(r, allowed, command)
    r.sp()
    return returns, partial


def parse_return_options(
    r: Reader, allowed: frozenset[str], command: str
) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """ "RETURN" SP "(" [option *(SP option)] ")", the reader after "RETURN" SP: the option names and
    PARTIAL's range. One PARTIAL or one ALL at most (RFC 5267 §4.4)."""
    partial: list[tuple[int, int]] = []

    def option() -> str:
        name = r.keyword()
        if name not in allowed:
            raise GrammarError(f"unknown {command} return option")
        if name == "PARTIAL":
            r.sp()
            partial.append(_partial_range(r))
        return name

    names = r.sequence(option)
    if names.count("PARTIAL") + names.count("ALL") > 1:
        raise GrammarError("at most one of PARTIAL and ALL")
    return names, partial[0] if partial else None


def parse_sort(r: Reader, allowed: frozenset[str] = SORT_RETURNS | CONTEXT_RETURNS) -> Sort:
    """The arguments after "SORT" (the reader is at the SP that follows it)."""
    r.sp()
    returns, partial = optional_return(r, allowed, "SORT")
    if r.peek() != 0x28:
        raise GrammarError("sort criteria must be a parenthesized list")
    criteria = r.sequence(lambda: _criterion(r))
    if not criteria:
        raise GrammarError("empty sort criteria")
    if len(criteria) > MAX_SORT_CRITERIA:
        raise GrammarError(f"more than {MAX_SORT_CRITERIA} sort criteria")
    if r.at_end():
        raise GrammarError("missing charset")
    r.sp()
    charset, key = _search_criteria(r)
    return Sort(criteria, charset, key, returns, partial)


def parse_thread(r: Reader) -> Thread:
    """The arguments after "THREAD"."""
    r.sp()
    algorithm = r.keyword()
    if algorithm not in THREAD_ALGORITHMS:
        raise GrammarError(f"unknown thread algorithm {algorithm}")
    if r.at_end():
        raise GrammarError("missing charset")
    r.sp()
    charset, key = _search_criteria(r)
    return Thread(algorithm, charset, key)


def parse_cancelupdate(r: Reader) -> CancelUpdate:
    # command-select =/ "CANCELUPDATE" 1*(SP quoted)
    tags = []
    while not r.at_end():
        r.sp()
        if r.peek() != 0x22:
            raise GrammarError("CANCELUPDATE takes quoted tags")
        tags.append(r.quoted().decode("utf-8", "replace"))
    if not tags:
        raise GrammarError("CANCELUPDATE needs at least one tag")
    return CancelUpdate(tuple(tags))
