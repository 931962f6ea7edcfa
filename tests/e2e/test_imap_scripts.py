"""The IMAP transcript suite: every script in tests/imap_scripts/ against the embedded default and
against S3 + Redis (the script format is described in tests/fixtures/imap_script.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.imap_script import Runner, parse
from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env

SCRIPTS = Path(__file__).resolve().parent.parent / "imap_scripts"
SCRIPT_FILES = sorted(SCRIPTS.rglob("*.imap"))


@pytest.fixture(scope="module", params=["embedded", "s3redis"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    tmp = tmp_path_factory.mktemp(f"scripts-{request.param}")
    overrides: dict[str, object] = {}
    if request.param == "s3redis":
        server = request.getfixturevalue("s3_server")
        from tests.fixtures.s3_server import make_bucket

        bucket = make_bucket(server.endpoint)
        redis_url = request.getfixturevalue("redis_server").url
        overrides = dict(
            blob_url=f"s3://{bucket}/mail", s3_endpoint=server.endpoint, events_url=redis_url, quota_url=redis_url
        )
    with imap_env(tmp, imap_poll_interval=1, **overrides) as e:
        yield e


def test_the_suite_has_scripts() -> None:
    assert len(SCRIPT_FILES) >= 1, f"no *.imap scripts under {SCRIPTS}"


@pytest.mark.parametrize("path", SCRIPT_FILES, ids=[str(p.relative_to(SCRIPTS)) for p in SCRIPT_FILES])
def test_script(env: ImapEnv, path: Path) -> None:
    runner = Runner(
        port=env.port(),
        tls_port=env.port(tls=True),
        accounts=env.new_account,
        append=lambda user, mailbox, data, flags: env.append(user, mailbox, data, flags) and None,
        password=PASSWORD,
    )
    runner.run(parse(path))
