"""Two mailstore replicas on one PostgreSQL (issue 20): mail delivered through either is read over IMAP
through the other, with one UID sequence per mailbox and each session catching up by MODSEQ (the event
bus here is per process, so nothing is pushed from one replica to the other: polling alone must do)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from mailstack.services.mailstore.core import MailstoreCore
from mailstack.services.mailstore.server import MailstoreServer
from mailstack.v1 import send_pb2 as spb
from prometheus_client import REGISTRY

from tests.e2e.outbound_support import ScriptedMx, outbound_stack, scripted_mx
from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env, message
from tests.fixtures.mailstore import Client, deliver, open_client, settings_for


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[ImapEnv, Client]]:
    """env: replica A with IMAP server 0; a replica B on the same database, data folder (internal CA,
    blobs) and settings, with IMAP server 1 in front of it; and a gRPC client of B."""
    with imap_env(tmp_path, metadata_url=postgres_url) as env:
        replica = MailstoreServer(env.settings.replace(mailstore_listen="127.0.0.1:0", send_listen="127.0.0.1:0"))
        env.run(replica.start)

        async def open_b() -> Client:  # gRPC aio channels belong to the loop that makes them
            return open_client(replica.address, env.settings.data_dir, replica.send_address)

        client = env.run(open_b)
        try:
            env.start_imap(mailstore_addr=replica.address)
            yield env, client
        finally:
            env.run(lambda: client.channel.close(None))
            env.run(lambda: replica.stop(1.0))


def until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(check) or not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_mail_through_either_replica_reads_the_same_over_imap_through_the_other(
    replicas: tuple[ImapEnv, Client],
) -> None:
    env, replica_b = replicas
    account = env.new_account()
    env.deliver(account, message("first"))  # through replica A
    with (
        IMAPClient("127.0.0.1", port=env.port(0), ssl=False) as via_a,
        IMAPClient("127.0.0.1", port=env.port(1), ssl=False) as via_b,
    ):
        via_a.login(account, PASSWORD)
        via_b.login(account, PASSWORD)
        selected_a = via_a.select_folder("INBOX")
        selected_b = via_b.select_folder("INBOX")
        assert selected_a[b"UIDVALIDITY"] == selected_b[b"UIDVALIDITY"]
        assert via_b.search("ALL") == [1]

        async def both_replicas_deliver() -> None:
            await asyncio.gather(
                *(deliver(env.client if i % 2 else replica_b, [account], message(f"m{i}")) for i in range(20))
            )

        env.run(both_replicas_deliver)
        # Each session sees all 21, with the same UIDs, from polling alone.
        for session in (via_a, via_b):
            until(lambda session=session: session.noop() is not None and len(session.search("ALL")) == 21)
        uids = via_b.search("ALL")
        assert uids == via_a.search("ALL") == list(range(1, 22))
        subjects_b = {uid: data[b"ENVELOPE"].subject for uid, data in via_b.fetch(uids, ["ENVELOPE"]).items()}
        subjects_a = {uid: data[b"ENVELOPE"].subject for uid, data in via_a.fetch(uids, ["ENVELOPE"]).items()}
        assert subjects_a == subjects_b and sorted(subjects_b.values()) == sorted(
            [b"first", *(f"m{i}".encode() for i in range(20))]
        )

        # A flag set through A is read through B; an APPEND through B takes the next UID.
        via_a.add_flags([3], [b"\\Flagged"])
        until(lambda: b"\\Flagged" in via_b.get_flags([3])[3])
        via_b.append("INBOX", message("appended"))
        until(lambda: via_a.noop() is not None and via_a.search("ALL")[-1:] == [22])
        assert via_b.search(["SUBJECT", "appended"]) == [22]


async def test_send_api_queues_and_delivers_with_postgresql_metadata(tmp_path: Path, postgres_url: str) -> None:
    # The outbound queue and API tokens live in PostgreSQL too: no SQLite file is made at all.
    mx = ScriptedMx()
    async with (
        scripted_mx(mx) as port,
        outbound_stack(tmp_path, {"remote.test": port}, metadata_url=postgres_url) as stack,
    ):
        raw = b"From: Shop <shop@example.test>\r\nTo: bob@remote.test\r\nSubject: raw\r\n\r\nbody\r\n"
        header = spb.SendHeader(idempotency_key="order-42", size=len(raw))
        first = await stack.send(header, raw)
        assert (await stack.send(header, raw)).duplicate
        await stack.start_worker()
        await stack.wait_status(
            first.message_id, lambda s: all(r.state == spb.DELIVERY_DELIVERED for r in s.recipients)
        )
        assert [r.recipients for r in mx.received] == [["bob@remote.test"]]
    sqlite_files = await asyncio.to_thread(lambda: list(tmp_path.rglob("*.sqlite3")))
    assert sqlite_files == [], "nothing needs SQLite when PostgreSQL is configured"


async def test_background_jobs_run_on_one_replica_and_move_on_when_it_stops(tmp_path: Path, postgres_url: str) -> None:
    # Two mailstore cores (as two replicas) on one database: one leads each background job; a graceful
    # stop hands it over at once (a crash would, after LEASE_ROUNDS rounds).
    cores = [await MailstoreCore.open(settings_for(tmp_path / name, metadata_url=postgres_url)) for name in ("a", "b")]
    first, second = (core.maintenance for core in cores)
    try:
        assert await first.lead("orphan-sweep", 60) and not await second.lead("orphan-sweep", 60)
        assert await first.lead("orphan-sweep", 60), "the leader renews its lease every round"
        assert await second.lead("quota-repair", 30) and not await first.lead("quota-repair", 30)
        await cores[0].close()
        assert await second.lead("orphan-sweep", 60)
    finally:
        await cores[1].close()


def job_rounds(records: list[logging.LogRecord], job: str) -> list[tuple[str, float, float]]:
    """(holder, start, end) of each logged round of `job` (Maintenance.running)."""
    rounds = []
    for record in records:
        if getattr(record, "job", None) == job:
            assert isinstance(record.args, tuple)
            _, how, holder, start, end = (str(arg) for arg in record.args)
            if how == "on":  # not the rounds run without the lease
                rounds.append((holder, float(start), float(end)))
    return sorted(rounds, key=lambda r: r[1])


async def test_background_rounds_are_logged_counted_and_never_overlap(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The loops themselves, on two replicas with one-second rounds: every round of the orphan sweep is
    run by the lease holder only, logged with its name and times, counted in
    mailstack_background_job_runs_total; after the leader's graceful stop the other runs it."""
    caplog.set_level(logging.INFO, "mailstack.mailstore")
    settings = [settings_for(tmp_path / n, metadata_url=postgres_url, orphan_sweep_seconds=1) for n in "ab"]
    cores = [await MailstoreCore.open(s) for s in settings]
    before = REGISTRY.get_sample_value("mailstack_background_job_runs_total", {"job": "orphan-sweep"}) or 0.0
    try:
        for core in cores:
            core.start_background()
        await asyncio.sleep(3.5)
        first = job_rounds(caplog.records, "orphan-sweep")
        assert len(first) >= 2 and len({holder for holder, _, _ in first}) == 1, first
        leader = next(core for core in cores if core.maintenance.holder == first[0][0])
        follower = next(core for core in cores if core is not leader)
        await leader.close()
        handover = time.time()
        await asyncio.sleep(2.5)
    finally:
        for core in cores:
            await core.close()
    every = job_rounds(caplog.records, "orphan-sweep")
    assert {holder for holder, start, _ in every if start < handover} == {leader.maintenance.holder}
    after = {holder for holder, start, _ in every if start >= handover}
    assert after == {follower.maintenance.holder}, every
    runs = REGISTRY.get_sample_value("mailstack_background_job_runs_total", {"job": "orphan-sweep"})
    assert runs is not None and runs - before == len(every)
    assert all(later[1] >= earlier[2] for earlier, later in itertools.pairwise(every)), every


async def test_a_round_longer_than_its_lease_keeps_the_job_to_itself(tmp_path: Path, postgres_url: str) -> None:
    """The lease is renewed while a round runs: a sweep that takes longer than the lease (found by the
    replica topology test on a busy machine: 2.5 s against a 2 s lease) never has a twin elsewhere."""
    cores = [await MailstoreCore.open(settings_for(tmp_path / n, metadata_url=postgres_url)) for n in "ab"]
    first, second = (core.maintenance for core in cores)
    try:
        long_round = asyncio.ensure_future(first.lead_round("long-job", 1, lambda: asyncio.sleep(3.5)))
        await asyncio.sleep(0.2)
        while not long_round.done():
            assert not await second.lead("long-job", 1), "the other replica got the job while its round ran"
            await asyncio.sleep(0.25)
        assert long_round.result() is True
    finally:
        for core in cores:
            await core.close()


# ---------------------------------------------------------------- one mailbox hammered through two replicas

HAMMER_OPS = 12  # operations per worker: bounded, about ten seconds in all


@dataclass
class Hammered:
    """What the workers were told and what the watchers saw, for the checks at the end."""

    appended: dict[str, list[int]] = field(default_factory=dict)  # worker -> APPENDUIDs, in its order
    uidvalidities: set[int] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)


def append_uid(reply: bytes) -> tuple[int, int]:
    """(UIDVALIDITY, UID) of a tagged APPEND answer with APPENDUID (RFC 4315 §3)."""
    match = re.search(rb"\[APPENDUID (\d+) (\d+)\]", reply)
    assert match, reply
    return int(match[1]), int(match[2])


def hammer_worker(port: int, account: str, role: str, name: str, out: Hammered) -> None:
    rng = random.Random(name)
    with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=30) as client:
        client.login(account, PASSWORD)
        out.appended[name] = []
        client.select_folder("INBOX")
        for i in range(HAMMER_OPS):
            try:
                if role == "append":
                    uidvalidity, uid = append_uid(client.append("INBOX", message(f"{name}-{i}")))
                    out.uidvalidities.add(uidvalidity)
                    out.appended[name].append(uid)
                    continue
                uids = client.search("ALL")
                if not uids:
                    continue
                some = rng.sample(uids, min(2, len(uids)))
                if role == "move":  # out and back in: each return takes new UIDs in INBOX
                    client.move(some, "Other")
                    client.select_folder("Other")
                    if back := client.search("ALL"):  # the other mover may have taken them back already
                        client.move(back, "INBOX")
                    client.select_folder("INBOX")
                elif role == "store":
                    client.add_flags(some, [b"\\Seen", f"$k{i % 3}".encode()])
                    client.remove_flags(some[:1], [b"\\Seen"])
                else:  # expunge
                    client.add_flags(some[:1], [b"\\Deleted"])
                    client.uid_expunge(some[:1])
            except IMAPClientError as e:  # a UID another worker took away meanwhile: NO, never BAD
                assert b"BAD" not in str(e).encode(), e
                out.refusals[role] += 1


def hammer_watcher(port: int, account: str, stop: threading.Event, out: Hammered) -> int:
    """Looks at INBOX as a CONDSTORE client until stopped: UIDVALIDITY never changes, UIDNEXT and
    HIGHESTMODSEQ never go back, a UID new to it is above every UID it saw, a message's MODSEQ never goes
    back and none is above the HIGHESTMODSEQ read after it. Returns how many looks it took."""
    ever: set[int] = set()
    modseqs: dict[int, int] = {}
    last = {b"UIDNEXT": 0, b"HIGHESTMODSEQ": 0, b"UIDVALIDITY": 0}
    looks = 0
    with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=30) as client:
        client.login(account, PASSWORD)
        client.enable("CONDSTORE")
        client.select_folder("INBOX", readonly=True)
        while not stop.is_set():
            client.noop()
            uids = client.search("ALL")
            fetched = {uid: data[b"MODSEQ"][0] for uid, data in client.fetch(uids, ["MODSEQ"]).items()} if uids else {}
            status = client.folder_status("INBOX", [b"UIDNEXT", b"HIGHESTMODSEQ", b"UIDVALIDITY"])
            out.violations += watcher_violations(ever, modseqs, fetched, status, last)
            ever |= set(fetched)
            modseqs.update(fetched)
            looks += 1
    return looks


def watcher_violations(
    ever: set[int], modseqs: dict[int, int], fetched: dict[int, int], status: dict[bytes, int], last: dict[bytes, int]
) -> list[str]:
    found = []
    for key, value in status.items():
        if key == b"UIDVALIDITY" and last[key] and value != last[key]:
            found.append(f"UIDVALIDITY {last[key]} -> {value}")
        if value < last[key]:
            found.append(f"{key.decode()} went back: {last[key]} -> {value}")
        last[key] = max(last[key], value)
    new = sorted(set(fetched) - ever)
    if new and ever and new[0] < max(ever):
        found.append(f"UID {new[0]} appeared after UID {max(ever)} had been seen")
    for uid, modseq in fetched.items():
        if modseq < modseqs.get(uid, 0):
            found.append(f"UID {uid}: MODSEQ went back {modseqs[uid]} -> {modseq}")
        if modseq > status[b"HIGHESTMODSEQ"]:
            found.append(f"UID {uid}: MODSEQ {modseq} above the HIGHESTMODSEQ {status[b'HIGHESTMODSEQ']} read after it")
    if fetched and max(fetched) >= status[b"UIDNEXT"]:
        found.append(f"UID {max(fetched)} not below UIDNEXT {status[b'UIDNEXT']}")
    return found


def test_one_mailbox_hammered_through_two_replicas_keeps_uid_and_modseq_order(
    replicas: tuple[ImapEnv, Client],
) -> None:
    """APPEND, MOVE out and back, STORE and EXPUNGE on one INBOX through two replicas at once (issue 20),
    watched through each: every APPENDUID is new and rises per client, and no watcher ever sees a UID
    or MODSEQ out of order or UIDVALIDITY change."""
    env, _ = replicas
    account = env.new_account()
    for i in range(6):
        env.deliver(account, message(f"seed-{i}"))
    with IMAPClient("127.0.0.1", port=env.port(0), ssl=False) as client:
        client.login(account, PASSWORD)
        client.create_folder("Other")
    roles = ["append", "move", "store", "expunge", "append", "move", "store", "append"]
    out, stop = Hammered(), threading.Event()
    with concurrent.futures.ThreadPoolExecutor(len(roles) + 2) as pool:
        watchers = [pool.submit(hammer_watcher, env.port(i), account, stop, out) for i in (0, 1)]
        workers = [
            pool.submit(hammer_worker, env.port(i % 2), account, role, f"{role}-{i}", out)
            for i, role in enumerate(roles)
        ]
        try:
            for worker in workers:
                worker.result(timeout=120)
        finally:
            stop.set()
        looks = [watcher.result(timeout=60) for watcher in watchers]
    assert not out.violations, out.violations[:10]
    assert len(out.uidvalidities) == 1 and min(looks) > 3, (out.uidvalidities, looks)
    every = [uid for uids in out.appended.values() for uid in uids]
    assert len(every) == 3 * HAMMER_OPS and len(set(every)) == len(every), "an APPENDUID was given twice"
    assert all(uids == sorted(uids) for uids in out.appended.values())
    views = []
    for index in (0, 1):  # both replicas end with the same mailbox
        with IMAPClient("127.0.0.1", port=env.port(index), ssl=False) as client:
            client.login(account, PASSWORD)
            client.enable("CONDSTORE")
            selected = client.select_folder("INBOX", readonly=True)
            uids = client.search("ALL")
            views.append((selected[b"UIDVALIDITY"], selected[b"UIDNEXT"], uids))
    assert views[0] == views[1] and views[0][0] in out.uidvalidities
    print(f"\nhammered through two replicas: refusals {dict(out.refusals)}, watcher looks {looks}")
