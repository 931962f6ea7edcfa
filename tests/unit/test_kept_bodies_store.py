"""KeptBodies (ADR 0045): reads of a kept body honour ranges and chunking exactly as a blob store's
do, and every other key falls through to the blob store behind it."""

from __future__ import annotations

import pytest
from mailstack.storage.blob.kept import KeptBodies
from mailstack.storage.blob.memory import MemoryBlobStore
from mailstack.storage.errors import BlobNotFound

BODY = bytes(range(256)) * 3


def store() -> tuple[KeptBodies, MemoryBlobStore]:
    kept = {"kept-1": BODY}

    async def kept_body(key: str) -> bytes | None:
        return kept.get(key)

    inner = MemoryBlobStore()
    return KeptBodies(inner, kept_body), inner


@pytest.mark.parametrize(("start", "end"), [(0, None), (10, 20), (700, None), (768, None), (900, 1000), (5, 5)])
async def test_ranges_of_a_kept_body_match_a_stored_blob(start: int, end: int | None) -> None:
    kept, inner = store()
    await inner.put("file-1", BODY)
    assert await kept.get("kept-1", start, end) == await kept.get("file-1", start, end) == BODY[start:end]


@pytest.mark.parametrize("chunk", [1, 100, 256, 10_000])
async def test_streaming_a_kept_body_gives_chunks_of_at_most_the_size_asked(chunk: int) -> None:
    kept, _ = store()
    parts = [part async for part in kept.stream("kept-1", 3, 700, chunk)]
    assert b"".join(parts) == BODY[3:700]
    assert all(0 < len(p) <= chunk for p in parts)


async def test_other_keys_fall_through_and_bad_input_is_refused() -> None:
    kept, inner = store()
    await kept.put("file-2", b"abc")
    assert await inner.get("file-2") == b"abc"
    assert await kept.exists("kept-1") and await kept.exists("file-2")
    assert not await kept.exists("nothing")
    with pytest.raises(BlobNotFound):
        await kept.get("nothing")
    with pytest.raises(ValueError):
        await kept.get("../etc/passwd")
    with pytest.raises(ValueError):
        await kept.get("kept-1", -1)
    with pytest.raises(ValueError):
        _ = [p async for p in kept.stream("kept-1", 0, None, 0)]
    await kept.delete("file-2")
    assert not await inner.exists("file-2")
    assert [key async for key, _ in kept.list_keys()] == []
