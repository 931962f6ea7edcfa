"""bench/mixed_workload.py: the operations a seeded client chooses are the same on every system and valid
in IMAP's states (RFC 3501 §3), and the model catches what a server gets wrong."""

from __future__ import annotations

from bench.mixed_workload import (
    EVERY_UID,
    NEEDS_MAILBOX,
    NEEDS_WRITABLE,
    Chooser,
    Model,
    parse_exists,
    parse_fetch,
    parse_search,
)


def ops(seed: int, client: int, cycles: bool, count: int = 400) -> list[tuple[str, int, str, float]]:
    chooser = Chooser(seed, client, 20, cycles)
    return [(op.name, op.account, op.mailbox, op.pick) for op in (chooser.next() for _ in range(count))]


def test_the_same_seed_and_client_give_the_same_operations() -> None:
    assert ops(1, 3, True) == ops(1, 3, True)
    assert ops(1, 3, False) == ops(1, 3, False)
    assert ops(1, 3, True) != ops(1, 4, True)
    assert ops(1, 3, True) != ops(2, 3, True)


def test_every_operation_is_valid_in_the_session_state() -> None:
    for cycles in (True, False):
        connected, mailbox, writable = False, False, False
        for name, *_ in ops(5, 0, cycles, 3000):
            assert (name == "login") == (not connected)
            assert name not in NEEDS_MAILBOX or mailbox
            assert name not in NEEDS_WRITABLE or writable
            if name in ("select", "examine"):
                mailbox, writable = True, name == "select"
            connected = name != "logout"
            if not connected:
                mailbox, writable = False, False


def test_a_logout_each_cycle_comes_after_a_few_operations_and_never_otherwise() -> None:
    names = [name for name, *_ in ops(9, 1, True, 2000)]
    cycles = "|".join(names).split("|logout|")
    assert len(cycles) > 100
    assert all(2 <= len(cycle.split("|")) - 1 <= 8 for cycle in cycles[:-1])  # LOGIN, then 2-8 operations
    persistent = [name for name, *_ in ops(9, 1, False, 2000)]
    assert 0 < persistent.count("logout") < 60  # rare: a persistent client keeps its session


def test_a_broken_connection_makes_the_next_operation_a_login() -> None:
    chooser = Chooser(1, 0, 20, False)
    for _ in range(10):
        chooser.next()
    chooser.reset()
    assert chooser.next().name == "login"


def model_with_inbox() -> Model:
    model = Model(1)
    for uid in (3, 4, 7):
        model.appended(0, "INBOX", uid, f"<{uid}@x>", {"\\Seen"} if uid == 4 else set())
    model.stored(0, "INBOX", 3, "$Label1", True)
    model.stored(0, "INBOX", 4, "\\Seen", False)
    model.expunged(0, "INBOX", 7)
    return model


FETCHED = (
    b"* 1 FETCH (UID 3 FLAGS (\\Recent $Label1) BODY[HEADER.FIELDS (MESSAGE-ID)] {19}\r\nMessage-ID: <3@x>\r\n\r\n)\r\n"
    b"* 2 FETCH (FLAGS () UID 4 BODY[HEADER.FIELDS (MESSAGE-ID)] {19}\r\nMessage-ID: <4@x>\r\n\r\n)\r\n"
    b"t9 OK done\r\n"
)


def test_the_model_agrees_with_a_server_that_did_what_it_acknowledged() -> None:
    model = model_with_inbox()
    assert model.pick(0, "INBOX", 0.99, 10) == [4]
    assert model.pick(0, "INBOX", 0.0, 10) == [3, 4]
    assert model.compare(0, "INBOX", parse_fetch(FETCHED), parse_search(b"* SEARCH 3 4\r\nt8 OK\r\n")) == []
    assert parse_exists(b"* FLAGS (\\Seen)\r\n* 2 EXISTS\r\n* 0 RECENT\r\nt7 OK [READ-WRITE]\r\n") == 2


def test_the_model_reports_a_lost_flag_a_resurrected_message_and_a_wrong_body() -> None:
    model = model_with_inbox()
    lost_flag = FETCHED.replace(b"\\Recent $Label1", b"\\Recent")
    assert len(model.compare(0, "INBOX", parse_fetch(lost_flag), {3, 4})) == 1
    resurrected = FETCHED + b"* 3 FETCH (UID 7 FLAGS ())\r\n"
    assert len(model.compare(0, "INBOX", parse_fetch(resurrected), {3, 4, 7})) == 2  # SEARCH and FETCH
    wrong_body = FETCHED.replace(b"<4@x>", b"<9@x>")
    assert len(model.compare(0, "INBOX", parse_fetch(wrong_body), {3, 4})) == 1


def test_unsolicited_flag_updates_outside_the_asked_range_pass_and_the_last_flags_count() -> None:
    model = model_with_inbox()
    answer = (
        b"* 1 FETCH (UID 3 FLAGS ())\r\n"  # stale, superseded by the update after it
        b"* 1 FETCH (UID 3 FLAGS ($Label1) BODY[] {19}\r\nMessage-ID: <3@x>\r\n\r\n)\r\n"
        b"* 2 FETCH (UID 4 FLAGS (\\Flagged))\r\n"  # an update of another message, not asked for
    )
    assert model.differences(0, "INBOX", parse_fetch(answer), [3], range(3, 4)) == []
    assert model.differences(0, "INBOX", parse_fetch(answer), [3, 4], EVERY_UID, ids=False) != []
