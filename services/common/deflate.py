"""COMPRESS=DEFLATE (RFC 4978) for a stream connection: raw deflate both ways (RFC 1951, no zlib
header: wbits -15), every batch of output ended with Z_SYNC_FLUSH so the client can read it whole.

Inflating is bounded: one call gives at most `max_chunk` octets and keeps the rest of the input for
the next call, so a deflate bomb is inflated only as fast as the protocol's receiver takes it, and
the receiver's line and literal limits apply to the decompressed octets as to plain ones.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable


class CompressionError(ValueError):
    """The client's compressed stream is not valid deflate data (or it ended)."""


class Deflate:
    """One connection's compressor and decompressor (no I/O)."""

    def __init__(self, max_chunk: int, level: int = 6) -> None:
        self.max_chunk = max_chunk
        self._compress = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._decompress = zlib.decompressobj(-15)

    def compress(self, buffers: Iterable[bytes | memoryview]) -> bytes:
        """The buffers compressed and flushed (RFC 4978 §4: Z_SYNC_FLUSH after each response batch)."""
        out = [self._compress.compress(b) for b in buffers]
        out.append(self._compress.flush(zlib.Z_SYNC_FLUSH))
        return b"".join(out)

    @property
    def pending(self) -> bool:
        """Compressed input is left that the last call did not inflate (its output was bounded)."""
        return bool(self._decompress.unconsumed_tail)

    def decompress(self, data: bytes) -> bytes:
        """Inflate what is pending and then `data`; at most max_chunk octets (see `pending`)."""
        try:
            out = self._decompress.decompress(self._decompress.unconsumed_tail + data, self.max_chunk)
        except zlib.error as e:
            raise CompressionError(f"invalid compressed data: {e}") from None
        if self._decompress.eof:
            raise CompressionError("the compressed stream ended")  # RFC 4978: it lasts the connection
        return out
