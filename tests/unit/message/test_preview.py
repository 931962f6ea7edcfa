"""message/preview.py: RFC 8970 preview text."""

from __future__ import annotations

from mailstack.message.mime import parse_message
from mailstack.message.preview import MAX_CHARS, html_text, preview


def _preview(raw: bytes, prefix: int | None = None) -> str | None:
    structure = parse_message(raw).structure
    return preview(raw if prefix is None else raw[:prefix], structure)


def test_plain_text_is_decoded_and_collapsed() -> None:
    raw = (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b"SGVsbG8sCgogIHfDtnJsZAkhCg==\r\n"  # "Hello,\n\n  w\xc3\xb6rld\t!\n"
    )
    assert _preview(raw) == "Hello, wörld !"


def test_plain_is_preferred_to_html_and_attachments_are_skipped() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n'
        b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nattached\r\n--x\r\n"
        b"Content-Type: text/html\r\n\r\n<b>bold</b>\r\n--x\r\n"
        b"Content-Type: text/plain\r\n\r\nthe text\r\n--x--\r\n"
    )
    assert _preview(raw) == "the text"


def test_html_text_drops_markup_and_hidden_parts() -> None:
    text = html_text("<head><title>T</title><style>a{}</style></head><p>a&lt;b</p><!-- c --><script>x()</script>d")
    assert " ".join(text.split()) == "a<b d"


def test_no_text_is_empty_and_long_text_is_cut() -> None:
    assert _preview(b"Content-Type: image/png\r\n\r\nxx\r\n") == ""
    assert _preview(b"Subject: x\r\n\r\n" + b"ab " * 200) == ("ab " * 200)[:MAX_CHARS]
    assert len(_preview(b"\r\n" + "é".encode() * 300) or "") == MAX_CHARS  # characters, not octets


def test_text_beyond_the_octets_read_is_none() -> None:
    raw = b"Subject: x\r\n\r\nbody\r\n"
    assert _preview(raw, prefix=5) is None
    assert _preview(raw, prefix=len(raw)) == "body"
