"""A mailstore replica is ready only while its metadata database answers (issue 20, ADR 0035): while
PostgreSQL is down /ready says 503, so Kubernetes sends calls to the replicas that can serve them, and
it is ready again, without a restart, once the database is back. /live stays 200 (no restart loop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.fixtures.mailstore import settings_for
from tests.fixtures.ports import free_port
from tests.fixtures.postgres_server import PostgresServer, database_url
from tests.integration.test_telemetry import http_get, serving


async def status_within(url: str, expected: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        status = (await asyncio.to_thread(http_get, url))[0]
        if status == expected or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


async def test_mailstore_is_unready_while_postgresql_is_down(
    tmp_path: Path, restartable_postgres_server: PostgresServer
) -> None:
    server = restartable_postgres_server
    metrics_port = free_port()
    settings = settings_for(tmp_path, metrics_port=metrics_port, metadata_url=database_url(server.url, "postgres"))
    task, stop, _ = await serving(settings, ["mailstore"])
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        assert await status_within(base + "/ready", 200, 10) == 200
        await asyncio.to_thread(server.stop)
        assert await status_within(base + "/ready", 503, 10) == 503
        assert (await asyncio.to_thread(http_get, base + "/live"))[0] == 200
        await asyncio.to_thread(server.start)
        assert await status_within(base + "/ready", 200, 20) == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
