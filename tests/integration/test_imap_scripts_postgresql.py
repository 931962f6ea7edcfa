"""The IMAP transcript suite (tests/imap_scripts/, run by tests/e2e/test_imap_scripts.py on the embedded
default and on S3 + Redis) once more with the metadata in PostgreSQL, bodies in S3, events and quota in
Redis: the deployed shape of issue 20."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_imap_scripts import SCRIPT_FILES, SCRIPTS, no_tracebacks, run_script
from tests.fixtures.imap_server import ImapEnv, imap_env
from tests.fixtures.postgres_server import ExternalPostgresServer, PostgresServer, fresh_database
from tests.fixtures.redis_server import ExternalRedisServer, RedisServer
from tests.fixtures.s3_server import S3Server, make_bucket


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer | ExternalPostgresServer,
    s3_server: S3Server,
    redis_server: RedisServer | ExternalRedisServer,
) -> Iterator[ImapEnv]:
    bucket = make_bucket(s3_server.endpoint)
    with (
        fresh_database(postgres_server) as metadata_url,
        imap_env(
            tmp_path_factory.mktemp("scripts-postgresql"),
            imap_poll_interval=1,
            metadata_url=metadata_url,
            blob_url=f"s3://{bucket}/mail",
            s3_endpoint=s3_server.endpoint,
            events_url=redis_server.url,
            quota_url=redis_server.url,
        ) as e,
    ):
        yield e


@pytest.mark.parametrize("path", SCRIPT_FILES, ids=[str(p.relative_to(SCRIPTS)) for p in SCRIPT_FILES])
def test_script(env: ImapEnv, path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_script(env, path)
    no_tracebacks(caplog)
