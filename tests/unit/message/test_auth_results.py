"""Authentication-Results (RFC 8601): the field we write parses, and forged ones are removed."""

from __future__ import annotations

import authres
from mailstack.message.auth_results import MethodResult, authserv_id, header_field, without_forged


def parse(field: bytes) -> authres.AuthenticationResultsHeader:
    return authres.AuthenticationResultsHeader.parse(field.decode().replace("\r\n\t", " ").strip())


def test_written_field_parses_with_client_text_quoted() -> None:
    field = header_field(
        "mx.example.test",
        [
            MethodResult("spf", "pass", "matched (ip4)", [("smtp.mailfrom", "a@b.example")]),
            MethodResult("spf", "none", "", [("smtp.helo", 'evil "name"; dkim=pass')]),
            MethodResult("dkim", "fail", "", [("header.d", "b.example"), ("header.b", "ab/+cd==")]),
        ],
    )
    assert field.endswith(b"\r\n") and b"\r\n\t" in field
    header = parse(field)
    assert header.authserv_id == "mx.example.test"
    assert [(r.method, r.result) for r in header.results] == [("spf", "pass"), ("spf", "none"), ("dkim", "fail")]
    # one quoted value, never a result of its own (authres leaves the quoted-pairs escaped)
    assert header.results[1].properties[0].value.replace('\\"', '"') == 'evil "name"; dkim=pass'


def test_control_characters_cannot_inject_a_line() -> None:
    field = header_field("mx.test", [MethodResult("spf", "none", "x\r\nBcc: a", [("smtp.helo", "a\r\nX: y")])])
    assert field.count(b"\r\n") == 2  # the fold and the end, nothing from the client


def test_no_result_is_none() -> None:
    assert parse(header_field("mx.test", [])).results == []


def test_authserv_id_of_a_field_value() -> None:
    assert authserv_id(b" (our relay) MX.Example.Test 1; spf=pass") == b"MX.Example.Test"
    assert authserv_id(b"mx.test;dkim=pass") == b"mx.test"
    assert authserv_id(b"") == b""


def test_forged_fields_are_removed_others_kept() -> None:
    message = (
        b"Received: from x\r\n"
        b"authentication-results: MX.TEST;\r\n dkim=pass\r\n"
        b"Authentication-Results: other.test; spf=pass\r\n"
        b"Subject: Authentication-Results: mx.test\r\n"
        b"\r\n"
        b"Authentication-Results: mx.test; in the body, kept\r\n"
    )
    cleaned = without_forged(message, "mx.test")
    assert cleaned == (
        b"Received: from x\r\n"
        b"Authentication-Results: other.test; spf=pass\r\n"
        b"Subject: Authentication-Results: mx.test\r\n"
        b"\r\n"
        b"Authentication-Results: mx.test; in the body, kept\r\n"
    )


def test_nothing_forged_returns_the_same_object() -> None:
    message = b"Subject: hi\r\n\r\nbody\r\n"
    assert without_forged(message, "mx.test") is message
