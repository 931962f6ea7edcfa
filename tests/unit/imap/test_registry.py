"""The command registry (services/imap/registry.py): every entry complete, every table derived
from it, every advertised capability's commands registered."""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace

import pytest
from mailstack.services.imap import registry
from mailstack.services.imap.commands.misc import EXTENSIONS, capabilities
from mailstack.services.imap.registry import (
    ALWAYS_REFRESH,
    CAPABILITY_COMMANDS,
    COMMANDS,
    ENTRIES,
    GRAMMAR,
    NO_EXPUNGE_DURING,
    STATE_COMMANDS,
    UID_COMMANDS,
)
from mailstack.services.imap.session import State

RFC = re.compile(r"RFC \d{4} §\d+(\.\d+)*")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_each_entry_is_complete(entry: registry.CommandEntry) -> None:
    assert re.fullmatch(r"[A-Z]+", entry.name)
    assert callable(entry.parse)
    assert inspect.iscoroutinefunction(entry.handler)
    assert entry.states and entry.states <= {State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED}
    assert RFC.match(entry.rfc), f"{entry.name}: RFC section {entry.rfc!r}"
    assert isinstance(entry.uid, bool) and isinstance(entry.expunge_during, bool)
    assert isinstance(entry.always_refresh, bool)
    # a command that forbids EXPUNGE during it runs on sequence numbers; its UID form lifts that
    assert entry.expunge_during or entry.uid


def test_one_entry_per_command() -> None:
    assert len({e.name for e in ENTRIES}) == len(ENTRIES)


def test_every_table_is_derived_from_the_entries() -> None:
    assert set(COMMANDS) == set(GRAMMAR) == {e.name for e in ENTRIES}
    for e in ENTRIES:
        assert GRAMMAR[e.name].parse is e.parse and GRAMMAR[e.name].uid == e.uid
        for state in State:
            assert (e.name in STATE_COMMANDS[state]) == (state in e.states)
    assert STATE_COMMANDS[State.LOGOUT] == frozenset()


def test_the_tables_hold_what_the_rfcs_say() -> None:
    # RFC 9051 §6.1-6.4; the same sets the hand-kept tables held before the registry
    any_state = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
    assert STATE_COMMANDS[State.NOT_AUTHENTICATED] == any_state | {"STARTTLS", "AUTHENTICATE", "LOGIN"}
    authenticated = any_state | {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE"}
    authenticated |= {"LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "ENABLE", "IDLE"}
    authenticated |= {"GETQUOTA", "GETQUOTAROOT", "SETQUOTA"}
    authenticated |= {"COMPRESS"}  # RFC 4978
    authenticated |= {"NOTIFY"}  # RFC 5465 §3.1
    assert STATE_COMMANDS[State.AUTHENTICATED] == authenticated
    selected = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE"}
    selected |= {"SORT", "THREAD", "CANCELUPDATE"}  # RFC 5256 §3-4, RFC 5267 §4.3.5
    assert STATE_COMMANDS[State.SELECTED] == authenticated | selected
    # RFC 9051 §6.4.9, RFC 5256 §3-4 (UID SORT, UID THREAD)
    assert UID_COMMANDS == {"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT", "THREAD"}
    assert NO_EXPUNGE_DURING == {"FETCH", "STORE", "SEARCH", "SORT", "THREAD"}  # RFC 9051 §7.5.1
    assert ALWAYS_REFRESH == {"NOOP", "CHECK", "IDLE"}


def _advertised() -> set[str]:
    """Every capability the server may advertise, in any state, with or without TLS."""
    out: set[str] = set()
    settings = SimpleNamespace(allow_plaintext_auth=False, max_message_size=1000)
    for state in (State.NOT_AUTHENTICATED, State.AUTHENTICATED):
        for tls, can_start_tls in ((False, True), (True, False)):
            session = SimpleNamespace(
                state=state, settings=settings, conn=SimpleNamespace(tls=tls, can_start_tls=can_start_tls)
            )
            out |= set(capabilities(session).split())  # type: ignore[arg-type]
    return out


def test_every_advertised_capability_has_its_commands_registered() -> None:
    advertised = _advertised()
    assert set(EXTENSIONS) <= advertised
    for capability in advertised:
        if capability.startswith("APPENDLIMIT="):
            continue  # a limit of APPEND (RFC 7889), no command of its own
        if capability not in CAPABILITY_COMMANDS:
            assert capability in _WITHOUT_COMMANDS, f"{capability}: which commands does it bring?"
            continue
        missing = CAPABILITY_COMMANDS[capability] - set(COMMANDS)
        assert not missing, f"{capability} advertised but {missing} not registered"
    assert "EXPUNGE" in UID_COMMANDS  # UIDPLUS: UID EXPUNGE (RFC 4315 §2.1)


# Capabilities that change the responses of registered commands but add none (each is exercised
# by its e2e test): LITERAL+ (framing), SASL-IR (AUTHENTICATE's initial response), CHILDREN and
# SPECIAL-USE (LIST attributes), QUOTA=RES-* (GETQUOTA's resources).
_WITHOUT_COMMANDS = {"LITERAL+", "SASL-IR", "CHILDREN", "SPECIAL-USE", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"}
