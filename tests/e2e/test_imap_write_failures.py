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


def test_idle_retries_a_catch_up_that_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hint came but reading the change log failed (the mailstore was restarting): IDLE reads it
    # again a moment later, rather than leaving the news to the next poll (an hour here).
    with imap_env(tmp_path, imap_poll_interval=3600) as env:
        account = env.new_account()
        core = env.mailstore.core
        assert core is not None
        changes_since = core.changes.changes_since
        failures: list[tuple[object, ...]] = []

        async def once_unavailable(*args: object) -> object:
            if not failures:
                failures.append(args)
                raise StorageUnavailable("the mailstore is restarting")
            return await changes_since(*args)  # type: ignore[arg-type]

        with IMAPClient("127.0.0.1", port=env.port(), ssl=False) as client:
            client.login(account, PASSWORD)
            client.select_folder("INBOX")
            monkeypatch.setattr(core.changes, "changes_since", once_unavailable)
            client.idle()
            env.deliver(account, message("during idle"))
            responses = client.idle_check(timeout=5)
            client.idle_done()  # first: a failed assertion must not leave the session in IDLE
            assert failures, "the catch-up never failed: the test did not test the retry"
            assert (1, b"EXISTS") in responses, responses
