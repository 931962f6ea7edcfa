"""Shared fixtures. Real servers (Valkey, SeaweedFS) are started on demand by the
fixture modules below, or taken from MAILSTACK_TEST_REDIS_URL / MAILSTACK_TEST_S3_ENDPOINT /
MAILSTACK_TEST_POSTGRES_URL."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.s3_server",
    "tests.fixtures.postgres_server",
]
