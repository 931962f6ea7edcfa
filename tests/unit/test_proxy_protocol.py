"""The pure PROXY header parser: v1 and v2, fed whole, byte by byte and split at every
position, with the mail protocol's bytes behind it; arbitrary bytes only ever raise its error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.services.common.proxy_protocol import (
    NEED_DATA,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    bytes_wanted,
    is_trusted,
    parse_header,
    parse_networks,
)

FOLLOWING = b"EHLO client.example\r\n"


def v2(command: int, family_protocol: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family_protocol, len(body)) + body


def v2_inet(src: bytes, dst: bytes, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    return v2(0x1, 0x11, src + dst + struct.pack("!HH", sport, dport) + tlvs)


V2_IPV4 = v2_inet(bytes([203, 0, 113, 7]), bytes([10, 0, 0, 1]), 51234, 25)
V2_IPV6 = v2(0x1, 0x21, bytes.fromhex("20010db8" + "00" * 11 + "01") + bytes(16) + struct.pack("!HH", 40000, 993))
TLV = bytes([0x04]) + struct.pack("!H", 5) + b"hello"  # PP2_TYPE_NOOP, skipped

VALID = [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 25\r\n", ("203.0.113.7", 51234)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 993\r\n", ("2001:db8::1", 40000)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 65535\r\n", None),
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", ("255.255.255.255", 65535)),
    (V2_IPV4, ("203.0.113.7", 51234)),
    (V2_IPV6, ("2001:db8::1", 40000)),
    (v2_inet(bytes([198, 51, 100, 1]), bytes(4), 1, 2, TLV * 3), ("198.51.100.1", 1)),
    (v2(0x0, 0x00, b""), None),  # LOCAL: a health check from the balancer itself
    (v2(0x0, 0x11, bytes(12)), None),  # LOCAL ignores addresses
    (v2(0x1, 0x00, b""), None),  # PROXY + UNSPEC: keep the real peer
    (v2(0x1, 0x31, bytes(216)), None),  # AF_UNIX: no IP to use
]

INVALID = [
    b"EHLO x\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n",
    b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
    b"PROXY TCP6 203.0.113.7 2001:db8::2 1 2\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 25\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 0123 25\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 +1 25\r\n",
    b"PROXY TCP4  203.0.113.7 10.0.0.1 1 25\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 1 25\n",  # bare LF
    b"PROXY UDP4 203.0.113.7 10.0.0.1 1 25\r\n",
    b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n",
    b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n",  # longer than 107 bytes
    b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \xff\r\n",
    b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
    V2_SIGNATURE[:11] + b"X" + bytes(4),
    v2(0x1, 0x11, bytes(8)),  # address block too short
    v2(0x2, 0x11, bytes(12)),  # unknown command
    v2(0x1, 0x12, bytes(12)),  # DGRAM
    v2(0x1, 0x41, bytes(12)),  # unknown family
    bytes([*V2_SIGNATURE, 0x10, 0x11, 0, 12]) + bytes(12),  # version 1 in a v2 header
    V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 4097),  # bounded length
]


def feed_in_pieces(data: bytes, cuts: list[int]) -> ProxyHeader:
    """Feed data growing piece by piece as a server would: NEED_DATA until the header is whole,
    never asking for more than the header (bytes_wanted); returns the header."""
    received = b""
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        received += data[start:end]
        result = parse_header(received)
        if result is not NEED_DATA:
            assert isinstance(result, ProxyHeader)
            return result
        assert bytes_wanted(received) >= 1
    raise AssertionError("header never completed")


@pytest.mark.parametrize(("header", "source"), VALID)
def test_valid_header_whole_bytewise_split_and_followed(header: bytes, source: tuple[str, int] | None) -> None:
    # whole, and with the mail protocol's bytes behind it (which must be left for the server)
    for data in (header, header + FOLLOWING):
        result = parse_header(data)
        assert isinstance(result, ProxyHeader)
        assert result.source == source and result.length == len(header)
        assert data[result.length :] in (b"", FOLLOWING)
    # byte by byte
    assert feed_in_pieces(header + FOLLOWING, list(range(1, len(header) + len(FOLLOWING)))).length == len(header)
    # split once at every position
    for cut in range(1, len(header) + len(FOLLOWING)):
        result = feed_in_pieces(header + FOLLOWING, [cut])
        assert result.source == source and result.length == len(header)


@pytest.mark.parametrize("header", VALID, ids=range(len(VALID)))
def test_reading_what_bytes_wanted_says_never_passes_the_header(header: tuple[bytes, object]) -> None:
    data, received = header[0] + FOLLOWING, b""
    while (result := parse_header(received)) is NEED_DATA:
        received += data[len(received) : len(received) + bytes_wanted(received)]
    assert isinstance(result, ProxyHeader)
    assert received == header[0]  # the ClientHello / first command is still in the socket


@pytest.mark.parametrize("data", INVALID)
def test_invalid_header_is_an_error_whole_and_in_pieces(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_header(data)
    with pytest.raises(ProxyProtocolError):  # byte by byte: detected at the latest when all has arrived
        feed_in_pieces(data, list(range(1, len(data))))


def test_partial_signatures_need_data() -> None:
    for prefix in (b"", b"P", b"PROXY", b"PROXY TCP4 1.2.3.4", V2_SIGNATURE[:5], V2_IPV4[:20]):
        assert parse_header(prefix) is NEED_DATA


def test_v2_with_declared_length_waits_for_all_of_it() -> None:
    header = v2_inet(bytes([1, 2, 3, 4]), bytes(4), 5, 6, TLV)
    assert parse_header(header[:-1]) is NEED_DATA
    assert bytes_wanted(header[:16]) == len(header) - 16


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_the_parsers_error(data: bytes) -> None:
    try:
        result = parse_header(data)
    except ProxyProtocolError:
        return
    if result is NEED_DATA:
        assert bytes_wanted(data) >= 1
    else:
        assert isinstance(result, ProxyHeader) and 0 < result.length <= len(data)


@given(st.sampled_from([h for h, _ in VALID]), st.binary(max_size=40))
def test_arbitrary_tails_after_a_valid_header_are_left_alone(header: bytes, tail: bytes) -> None:
    result = parse_header(header + tail)
    assert isinstance(result, ProxyHeader) and result.length == len(header)


@given(st.binary(min_size=16, max_size=80))
def test_arbitrary_bytes_behind_the_v2_signature(rest: bytes) -> None:
    try:
        parse_header(V2_SIGNATURE + rest)
    except ProxyProtocolError:
        pass


def test_trusted_networks() -> None:
    networks = parse_networks(" 10.0.0.0/8, ::1/128,192.0.2.7 ,")
    assert is_trusted("10.1.2.3", networks)
    assert is_trusted("192.0.2.7", networks)
    assert is_trusted("::1", networks)
    assert is_trusted("::ffff:10.0.0.9", networks)  # a dual-stack socket's view of an IPv4 peer
    assert not is_trusted("11.0.0.1", networks)
    assert not is_trusted("::2", networks)
    assert not is_trusted("not an address", networks)
    assert parse_networks("") == ()
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/33")
