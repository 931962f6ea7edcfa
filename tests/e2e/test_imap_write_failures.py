"""A write the IMAP server makes on its own while it announces news (the \\Recent claim) fails because
the mailstore replica it reached died under it (issue 20, ADR 0035: writes are never retried). The
session announces the new message anyway, without \\Recent, and IDLE and NOOP go on: the client is
not answered NO for asking for news."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient
from mailstack.storage.errors import StorageUnavailable

from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env, message


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ImapEnv]:
    with imap_env(tmp_path) as env:
        yield env


def test_news_is_announced_when_the_recent_claim_fails(env: ImapEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    account = env.new_account()
    core = env.mailstore.core
    assert core is not None

    async def replica_gone(account: str, mailbox: str) -> tuple[int, int]:
        raise StorageUnavailable("the replica died under the call")

    with IMAPClient("127.0.0.1", port=env.port(), ssl=False) as client:
        client.login(account, PASSWORD)
        client.select_folder("INBOX")
        monkeypatch.setattr(core.mailboxes, "claim_recent", replica_gone)
        client.idle()
        env.deliver(account, message("during idle"))
        responses = client.idle_check(timeout=10)
        assert (1, b"EXISTS") in responses, responses
        client.idle_done()  # the tagged OK: imapclient raises on a NO
        env.deliver(account, message("before noop"))
        _, untagged = client.noop()
        assert (2, b"EXISTS") in untagged, untagged
        assert b"\\Recent" not in client.get_flags([1, 2])[2]
        monkeypatch.undo()
        env.deliver(account, message("claimed again"))
        client.noop()
        assert b"\\Recent" in client.get_flags([3])[3]
