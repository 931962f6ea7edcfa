"""IMAP read-ahead: a client that downloads one message after another (mbsync, fetchmail, getmail,
offline sync) gets each body from one FetchBodies call per batch, byte-exact, with FETCH's
semantics unchanged (PEEK leaves \\Seen alone, BODY[] sets it), and the memory comes back."""

from __future__ import annotations

import imaplib
import random
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env

COUNT = 70  # more than two batches of commands/fetch.py READ_AHEAD_MESSAGES


def bodies(count: int) -> list[bytes]:
    rng = random.Random(3)
    out = []
    for n in range(count):
        lines = [b".dot line", b"8-bit \xe9\xe8 \xc3\xa9", b"x" * rng.randint(10, 900)] * rng.randint(1, 40)
        out.append(b"Subject: m%d\r\n\r\n" % n + b"\r\n".join(lines) + b"\r\n")
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("imap-read-ahead")) as e:
        yield e


def metadata_reads() -> float:
    """Message-row reads in the mailstore: one per FetchBodies (or FetchMetadata) call."""
    labels = {"store": "metadata", "operation": "fetch"}
    return REGISTRY.get_sample_value("mailstack_storage_duration_seconds_count", labels) or 0.0


def held() -> float:
    return REGISTRY.get_sample_value("mailstack_imap_read_ahead_bytes") or 0.0


def mailbox(env: ImapEnv, data: list[bytes]) -> tuple[imaplib.IMAP4, list[int]]:
    user = env.new_account()
    for body in data:
        env.deliver(user, body)
    client = imaplib.IMAP4("127.0.0.1", env.port())
    client.login(user, PASSWORD)
    client.select("INBOX")
    _, found = client.uid("SEARCH", "ALL")
    return client, [int(u) for u in found[0].split()]


def fetch_one(client: imaplib.IMAP4, uid: int, item: str) -> tuple[bytes, bytes]:
    status, data = client.uid("FETCH", str(uid), f"({item})")
    assert status == "OK"
    head, body = data[0]
    tail = data[1] if len(data) > 1 and isinstance(data[1], bytes) else b""  # items after the literal
    return head + tail, body


def test_sequential_download_is_byte_exact_in_few_calls(env: ImapEnv) -> None:
    data = bodies(COUNT)
    client, uids = mailbox(env, data)
    before = metadata_reads()
    got = [fetch_one(client, uid, "BODY.PEEK[]")[1] for uid in uids]
    calls = metadata_reads() - before
    assert got == data
    # the first alone, then a call per batch of up to 32 (or 1 MiB) instead of one per message
    assert calls <= 1 + -(-(COUNT - 1) // 32) + 1, calls
    _, flags = client.uid("FETCH", f"{uids[0]}:{uids[-1]}", "(FLAGS)")
    assert not any(b"\\Seen" in f for f in flags), "PEEK set no flag"
    client.logout()
    assert held() == 0, "nothing held once the session ended"


def test_body_fetch_still_sets_seen_and_reports_it(env: ImapEnv) -> None:
    data = bodies(5)
    client, uids = mailbox(env, data)
    for uid, expected in zip(uids, data, strict=True):
        head, body = fetch_one(client, uid, "BODY[]")
        assert body == expected and b"\\Seen" in head, head
    client.logout()


def test_out_of_order_and_partial_fetches_are_not_read_ahead(env: ImapEnv) -> None:
    data = bodies(12)
    client, uids = mailbox(env, data)
    before = metadata_reads()
    for index in (5, 2, 9, 0, 11):  # no message follows the one before: a call each, as before
        assert fetch_one(client, uids[index], "BODY.PEEK[]")[1] == data[index]
    assert metadata_reads() - before == 5
    assert fetch_one(client, uids[1], "BODY.PEEK[]<0.10>")[1] == data[1][:10]
    assert fetch_one(client, uids[2], "BODY.PEEK[TEXT]")[1] == data[2].split(b"\r\n\r\n", 1)[1]
    client.logout()
    assert held() == 0


def test_reselect_and_expunge_drop_what_was_read_ahead(env: ImapEnv) -> None:
    data = bodies(10)
    client, uids = mailbox(env, data)
    fetch_one(client, uids[0], "BODY.PEEK[]")
    fetch_one(client, uids[1], "BODY.PEEK[]")  # starts the read-ahead of 2..10
    assert held() > 0
    client.uid("STORE", str(uids[3]), "+FLAGS.SILENT", r"(\Deleted)")
    client.expunge()
    client.select("INBOX")  # a new view: what was held is dropped
    assert held() == 0
    kept = [(u, d) for u, d in zip(uids, data, strict=True) if u != uids[3]]
    assert [fetch_one(client, uid, "BODY.PEEK[]")[1] for uid, _ in kept] == [d for _, d in kept]
    client.logout()
    assert held() == 0


def test_without_budget_every_message_is_its_own_call(tmp_path_factory: pytest.TempPathFactory) -> None:
    with imap_env(tmp_path_factory.mktemp("imap-no-read-ahead"), imap_read_ahead_bytes=0) as env:
        data = bodies(6)
        client, uids = mailbox(env, data)
        before = metadata_reads()
        assert [fetch_one(client, uid, "BODY.PEEK[]")[1] for uid in uids] == data
        assert metadata_reads() - before == 6
        client.logout()
