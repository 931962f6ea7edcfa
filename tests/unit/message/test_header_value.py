"""One field of a header block (message/headers.py: header_value), as THREAD reads References."""

from __future__ import annotations

from mailstack.message.headers import header_value


def test_the_first_field_unfolded_case_insensitively() -> None:
    block = b"Subject: x\r\nREFERENCES: <a@b>\r\n <c@d>\r\nReferences: <e@f>\r\n\r\n"
    assert header_value(block, b"references") == b"<a@b> <c@d>"


def test_absent_and_lookalikes() -> None:
    assert header_value(b"Subject: x\r\n\r\n", b"references") is None
    assert header_value(b"X-References: <a@b>\r\n\r\n", b"references") is None
    # a continuation line that starts like the field is not the field
    assert header_value(b"Subject: x\r\n References: <a@b>\r\n\r\n", b"references") is None


def test_only_the_header() -> None:
    assert header_value(b"Subject: x\r\n\r\nReferences: <a@b>\r\n", b"references") is None
