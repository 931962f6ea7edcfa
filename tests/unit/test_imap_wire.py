"""The model checker's response parser (tests/fixtures/imap_wire.py): literals, nesting, codes, sets."""

from __future__ import annotations

from tests.fixtures.imap_wire import parse_set, response_code, tokenize


def test_fetch_with_literal_and_nested_lists() -> None:
    data = b'3 FETCH (UID 7 FLAGS (\\Seen $label1) MODSEQ (12) BODY[HEADER] {5}\r\na) (b ENVELOPE ("x \\"y\\"" NIL))'
    assert tokenize(data) == [
        "3",
        "FETCH",
        [
            "UID",
            "7",
            "FLAGS",
            ["\\Seen", "$label1"],
            "MODSEQ",
            ["12"],
            "BODY[HEADER]",
            b"a) (b",
            "ENVELOPE",
            [b'x "y"', "NIL"],
        ],
    ]


def test_vanished_earlier_and_search() -> None:
    assert tokenize(b"VANISHED (EARLIER) 1:3,9") == ["VANISHED", ["EARLIER"], "1:3,9"]
    assert tokenize(b"SEARCH 2 4 (MODSEQ 9)") == ["SEARCH", "2", "4", ["MODSEQ", "9"]]


def test_response_codes() -> None:
    assert response_code("[COPYUID 5 1:2 7:8] Done") == ("COPYUID", "5 1:2 7:8", "Done")
    assert response_code("[READ-WRITE] ok") == ("READ-WRITE", "", "ok")
    assert response_code("no code") == (None, "", "no code")


def test_sets_keep_their_order() -> None:
    assert parse_set("1:3,7,9:8") == [1, 2, 3, 7, 9, 8]
