"""Status lines, multi-line responses, incremental dot-stuffing and the TOP line limit."""

from __future__ import annotations

import pytest
from mailstack.services.pop3.protocol import BodyLineLimit, decode_plain, err, multiline, ok
from mailstack.services.pop3.protocol.sasl import SaslError

from .feeding import stuff, stuff_every_split


def test_status_lines_with_response_codes() -> None:
    assert ok() == b"+OK\r\n"
    assert ok("2 320") == b"+OK 2 320\r\n"
    assert err("locked", "IN-USE") == b"-ERR [IN-USE] locked\r\n"
    assert err("down", "SYS/TEMP") == b"-ERR [SYS/TEMP] down\r\n"
    assert err("a\r\nb") == b"-ERR a  b\r\n"  # a value can never split the line


def test_multiline_stuffs_and_terminates() -> None:
    assert multiline(ok("follows"), ["TOP", ".odd", b"x"]) == b"+OK follows\r\nTOP\r\n..odd\r\nx\r\n.\r\n"
    assert multiline(ok(), []) == b"+OK\r\n.\r\n"


def test_dot_stuffing_every_split() -> None:
    data = b".starts\r\nmid.dle\r\n..two\r\n.\r\nend\r\n"
    assert stuff_every_split(data) == b"..starts\r\nmid.dle\r\n...two\r\n..\r\nend\r\n.\r\n"


def test_every_line_dotted() -> None:
    # the benchmark's worst case: the split+join path with a match on every line
    data = b"".join(b".%d\r\n" % i for i in range(200))
    assert stuff_every_split(data[:40]) == data[:40].replace(b"\r\n.", b"\r\n..").replace(b".", b"..", 1) + b".\r\n"
    assert stuff([data], crlf=True) == b"." + data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def test_line_ends_are_normalised_to_crlf() -> None:
    assert stuff_every_split(b"a\nb\rc\r\n.d\n.\r") == b"a\r\nb\r\nc\r\n..d\r\n..\r\n.\r\n"
    # as many CRs as LFs, but not in pairs: the CRLF-only fast path must not take these
    assert stuff_every_split(b"a\n\r.b\r\n") == b"a\r\n\r\n..b\r\n.\r\n"
    assert stuff_every_split(b"a\r\r\n\n.b") == b"a\r\n\r\n\r\n..b\r\n.\r\n"


def test_missing_final_line_end_is_added() -> None:
    assert stuff_every_split(b"last line") == b"last line\r\n.\r\n"
    assert stuff_every_split(b".") == b"..\r\n.\r\n"
    assert stuff([]) == b".\r\n"
    assert stuff([b"", b""]) == b".\r\n"


def test_eight_bit_and_nul_bytes_pass_unchanged() -> None:
    data = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
    assert stuff_every_split(data) == data + b".\r\n"


@pytest.mark.parametrize("lines", [0, 1, 2, 3, 10, 99999999])
def test_body_line_limit_every_split(lines: int) -> None:
    body = b"one\r\ntwo\r\nthree\r\nfour"
    expected = b"".join(body.splitlines(keepends=True)[:lines])
    for i in range(len(body) + 1):
        limit = BodyLineLimit(lines)
        out = limit.feed(body[:i])
        out += limit.feed(body[i:])
        assert out == expected, f"split at {i}"
    assert BodyLineLimit(2).feed(body) == b"one\r\ntwo\r\n"


def test_body_line_limit_reports_done() -> None:
    limit = BodyLineLimit(1)
    assert not limit.done
    assert limit.feed(b"a\r\nb\r\n") == b"a\r\n"
    assert limit.done
    assert limit.feed(b"more\r\n") == b""
    assert BodyLineLimit(0).done


def test_sasl_plain() -> None:
    assert decode_plain(b"AGFsaWNlQGV4YW1wbGUudGVzdABzM2NyZXQ=") == ("", "alice@example.test", "s3cret")
    assert decode_plain(b"YQBiAGM=") == ("a", "b", "c")
    for bad in (b"!!!", b"YWJj", b"AABj"):  # not base64; no NULs; empty authcid
        with pytest.raises(SaslError):
            decode_plain(bad)
