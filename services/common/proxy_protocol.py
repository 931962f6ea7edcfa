"""The PROXY protocol header (HAProxy's "PROXY protocol" v1 and v2), parsed without I/O.

A load balancer in front of a mail listener opens each backend connection with one header
saying who the client really is; the mail protocol's bytes follow it. `parse_header` takes
what has been received so far and answers `NEED_DATA`, a `ProxyHeader` (how many bytes the
header took, and the client's address or None = "use the real peer"), or raises
`ProxyProtocolError`. `bytes_wanted` says how much more may be read without reading past the
header, so an implicit-TLS listener can leave the ClientHello in the socket.
Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # spec §2.1: the longest v1 line, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH: Final = 16  # signature, ver/cmd, fam/proto, length
# spec §2.2 allows 65535 bytes of addresses + TLVs; real balancers send a few hundred.
V2_MAX_LENGTH: Final = 4096
_V2_ADDRESS_LENGTHS: Final = {0x1: 12, 0x2: 36}  # AF_INET, AF_INET6: two addresses + two ports


class NeedData(Enum):
    NEED_DATA = "need data"


NEED_DATA: Final = NeedData.NEED_DATA


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header (the connection must be closed)."""


@dataclass(frozen=True)
class ProxyHeader:
    length: int  # bytes the header took; what follows belongs to the mail protocol
    source: tuple[str, int] | None  # the client's (address, port); None: LOCAL/UNKNOWN, use the real peer
    version: int


def parse_header(data: bytes) -> ProxyHeader | NeedData:
    """Parse the header at the start of `data` (raises ProxyProtocolError)."""
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if not data:
        return NEED_DATA
    raise ProxyProtocolError("no PROXY header")


def bytes_wanted(data: bytes) -> int:
    """How many more bytes may be read without passing the end of the header that `data` starts."""
    if len(data) < 8:  # both headers are longer than 8 bytes, and 8 tell them apart
        return 8 - len(data)
    if data.startswith(V2_SIGNATURE[:8]):
        if len(data) < V2_FIXED_LENGTH:
            return V2_FIXED_LENGTH - len(data)
        length: int
        (length,) = struct.unpack_from("!H", data, 14)
        return max(V2_FIXED_LENGTH + length - len(data), 1)
    # v1 ends at the first CRLF: after a CR it may be one byte away, else at least two
    return 1 if data.endswith(b"\r") else 2


# ---------------------------------------------------------------- v1 (spec §2.1)


def _parse_v1(data: bytes) -> ProxyHeader | NeedData:
    if not data.startswith(V1_PREFIX):
        if V1_PREFIX.startswith(data):
            return NEED_DATA
        raise ProxyProtocolError("no PROXY header")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data[:V1_MAX_LENGTH]:
            raise ProxyProtocolError("PROXY v1 line too long or not ended by CRLF")
        return NEED_DATA
    line = data[len(V1_PREFIX) : end]
    length = end + 2
    if any(byte < 0x20 or byte > 0x7E for byte in line):
        raise ProxyProtocolError("PROXY v1 line has non-printable bytes")
    fields = line.decode("ascii").split(" ")
    if fields[0] == "UNKNOWN":  # the balancer could not tell: the rest is ignored
        return ProxyHeader(length, None, 1)
    if len(fields) != 5 or fields[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("PROXY v1 line malformed")
    family, source, _destination, source_port, destination_port = fields
    address = _v1_address(source, 4 if family == "TCP4" else 6)
    _v1_address(_destination, 4 if family == "TCP4" else 6)
    _v1_port(destination_port)
    return ProxyHeader(length, (address, _v1_port(source_port)), 1)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 address invalid: {text!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ProxyProtocolError(f"PROXY v1 address invalid: {text!r}")
    return str(address)


def _v1_port(text: str) -> int:
    # spec: decimal, 0..65535, no leading zero
    if not text.isascii() or not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"PROXY v1 port invalid: {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"PROXY v1 port invalid: {text!r}")
    return port


# ---------------------------------------------------------------- v2 (spec §2.2)


def _parse_v2(data: bytes) -> ProxyHeader | NeedData:
    if not data.startswith(V2_SIGNATURE):
        if V2_SIGNATURE.startswith(data):
            return NEED_DATA
        raise ProxyProtocolError("no PROXY header")
    if len(data) < V2_FIXED_LENGTH:
        return NEED_DATA
    command, family, protocol, length = _v2_fixed_part(data)
    total = V2_FIXED_LENGTH + length
    if len(data) < total:
        return NEED_DATA
    if family > 0x3 or protocol > 0x2:
        raise ProxyProtocolError("PROXY v2 address family or protocol unknown")
    # LOCAL: the balancer's own connection (health checks), addresses ignored; UNSPEC or UNIX: no
    # client IP to use. Either way the connection keeps the real peer.
    if command == 0x0 or family not in _V2_ADDRESS_LENGTHS:
        return ProxyHeader(total, None, 2)
    if protocol != 0x1:
        raise ProxyProtocolError("PROXY v2 proxied protocol is not a stream")
    if length < _V2_ADDRESS_LENGTHS[family]:
        raise ProxyProtocolError("PROXY v2 address block too short")
    return ProxyHeader(total, _v2_source(family, data[V2_FIXED_LENGTH:]), 2)


def _v2_fixed_part(data: bytes) -> tuple[int, int, int, int]:
    """(command, address family, protocol, length of the rest) of the 16-byte start, checked."""
    version_command, family_protocol, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 0x2:
        raise ProxyProtocolError("PROXY v2 version unsupported")
    command = version_command & 0x0F
    if command not in (0x0, 0x1):
        raise ProxyProtocolError("PROXY v2 command unknown")
    if length > V2_MAX_LENGTH:
        raise ProxyProtocolError("PROXY v2 header too long")
    return command, family_protocol >> 4, family_protocol & 0x0F, length


def _v2_source(family: int, block: bytes) -> tuple[str, int]:
    """The source address and port of an INET (0x1) or INET6 block; TLVs after them are skipped."""
    if family == 0x1:
        return str(ipaddress.IPv4Address(block[0:4])), struct.unpack_from("!H", block, 8)[0]
    return str(ipaddress.IPv6Address(block[0:16])), struct.unpack_from("!H", block, 32)[0]


# ---------------------------------------------------------------- who may send one


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is a /32 or /128); raises ValueError on a bad one."""
    networks = []
    for part in text.split(","):
        part = part.strip()
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not a network: {part!r}") from None
    return tuple(networks)


def is_trusted(ip: str, networks: tuple[Network, ...]) -> bool:
    """Whether a peer address lies in one of the networks (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
