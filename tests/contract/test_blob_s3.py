"""The blob contract on a real S3 server (SeaweedFS), bare and behind the in-memory cache, on both
S3 clients (our lean one, the default, and boto3: ADR 0042), and S3's own faults."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from mailstack.storage.blob.s3 import S3BlobStore
from mailstack.storage.blob.s3lean import LeanS3BlobStore
from mailstack.storage.errors import StorageUnavailable

from tests.contract.blob_contract import BlobStoreContract, all_keys, collect
from tests.fixtures.s3_server import S3Server, make_bucket, s3_client


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_url(self, s3_bucket: tuple[str, str]) -> str:
        return f"s3://{s3_bucket[1]}/mail/blobs"

    @pytest.fixture
    def blob_options(self, s3_bucket: tuple[str, str]) -> dict[str, Any]:
        return {"s3_endpoint": s3_bucket[0]}


class TestCachedS3BlobStore(TestS3BlobStore):
    @pytest.fixture
    def blob_options(self, s3_bucket: tuple[str, str]) -> dict[str, Any]:
        return {"s3_endpoint": s3_bucket[0], "cache_bytes": 8 * 1024 * 1024}


class TestBoto3S3BlobStore(TestS3BlobStore):
    @pytest.fixture
    def blob_options(self, s3_bucket: tuple[str, str]) -> dict[str, Any]:
        return {"s3_endpoint": s3_bucket[0], "s3_client": "boto3"}


STORES = pytest.mark.parametrize("store_class", [LeanS3BlobStore, S3BlobStore], ids=["lean", "boto3"])


@STORES
async def test_s3_prefix_places_and_filters_keys(s3_bucket: tuple[str, str], store_class: type[S3BlobStore]) -> None:
    endpoint, bucket = s3_bucket
    client = s3_client(endpoint)
    client.put_object(Bucket=bucket, Key="outside", Body=b"not ours")
    client.put_object(Bucket=bucket, Key="tenant/blobs/sub/dir", Body=b"not ours")
    blobs = store_class(bucket, prefix="/tenant/blobs/", endpoint_url=endpoint)
    try:
        await blobs.put("m1", b"mail")
        listed = client.list_objects_v2(Bucket=bucket)["Contents"]
        assert sorted(o["Key"] for o in listed) == ["outside", "tenant/blobs/m1", "tenant/blobs/sub/dir"]
        assert list(await all_keys(blobs)) == ["m1"]
    finally:
        await blobs.close()


@STORES
async def test_s3_missing_bucket_is_not_a_missing_blob(
    s3_bucket: tuple[str, str], store_class: type[S3BlobStore]
) -> None:
    endpoint, _ = s3_bucket
    blobs = store_class("mailstack-no-such-bucket", endpoint_url=endpoint)
    try:
        with pytest.raises(StorageUnavailable):
            await blobs.get("k")
        with pytest.raises(StorageUnavailable):
            await blobs.exists("k")
    finally:
        await blobs.close()


@STORES
async def test_s3_server_down_then_back(
    s3_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_class: type[S3BlobStore]
) -> None:
    # A server of our own, so the session's server keeps serving the other tests.
    server = S3Server(str(tmp_path / "s3"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    server.start()
    try:
        bucket = make_bucket(server.endpoint)
        blobs = store_class(bucket, endpoint_url=server.endpoint)
        await blobs.put("before", b"kept across the outage")
        server.stop(graceful=False)
        for attempt in (blobs.put("during", b"x"), blobs.get("before"), collect(blobs.stream("before"))):
            began = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await attempt
            assert time.monotonic() - began < 10
        server.start()
        # The same store object serves again without being reopened. A restarted weed answers on its
        # S3 port a moment before its volume server has re-registered the old volumes (HTTP 500
        # meanwhile, seen on a loaded machine): that is a temporary error, so wait it out, bounded.
        deadline = time.monotonic() + 30
        while True:
            try:
                assert await blobs.get("before") == b"kept across the outage"
                break
            except StorageUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        await blobs.put("after", b"works again")
        assert await blobs.get("after") == b"works again"
        await blobs.close()
    finally:
        server.close()
