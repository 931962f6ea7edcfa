"""services/common/deflate.py: RFC 4978 DEFLATE with bounded inflation."""

from __future__ import annotations

import zlib

import pytest
from mailstack.services.common.deflate import CompressionError, Deflate


def _client() -> tuple[zlib._Compress, zlib._Decompress]:
    return zlib.compressobj(6, zlib.DEFLATED, -15), zlib.decompressobj(-15)


def test_round_trip_with_a_sync_flush_per_batch() -> None:
    server = Deflate(1024)
    out, inflate = _client()
    assert server.decompress(out.compress(b"a NOOP\r\n") + out.flush(zlib.Z_SYNC_FLUSH)) == b"a NOOP\r\n"
    wire = server.compress([b"* OK ", memoryview(b"hello\r\n")])
    assert wire.endswith(b"\x00\x00\xff\xff")  # Z_SYNC_FLUSH: the client can read the batch whole
    assert inflate.decompress(wire) == b"* OK hello\r\n"


def test_a_bomb_is_inflated_in_bounded_steps() -> None:
    server = Deflate(4096)
    out, _ = _client()
    bomb = out.compress(b"x" * 10_000_000) + out.flush(zlib.Z_SYNC_FLUSH)
    sizes = [len(server.decompress(bomb))]
    while server.pending:  # the rest waits in the decompressor until the receiver asks again
        sizes.append(len(server.decompress(b"")))
    assert max(sizes) == 4096  # never more than max_chunk octets at once
    assert sum(sizes) == 10_000_000


def test_invalid_or_ended_streams_are_errors() -> None:
    with pytest.raises(CompressionError):
        Deflate(1024).decompress(b"\xff\xff\xff\xff")
    out, _ = _client()
    with pytest.raises(CompressionError):
        Deflate(1024).decompress(out.compress(b"x") + out.flush(zlib.Z_FINISH))
