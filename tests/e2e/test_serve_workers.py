"""`mailstack serve` with MAILSTACK_WORKERS=2 (ADR 0043), as an operator runs it: two worker processes
share every port (the kernel picks one per connection) and one data folder. Connections are put on a
chosen worker by reconnecting until the kernel gives it (found from /proc), so each test knows which
worker served what: APPENDs through both get distinct increasing UIDs, an IDLE on one worker hears a
delivery on the other, `who`/`kick` see both, and a worker killed takes the whole `serve` down."""

from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from mailstack.services.common.setting_rules import AUTO_WORKERS_MAX
from mailstack.services.common.workers import usable_cpus
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import open_client
from tests.fixtures.serve_process import Served, running_serve, serve_env

pytestmark = pytest.mark.slow

USER, OTHER, PASSWORD = "ann@example.test", "bob@example.test", "secret-Pass1"
WORKERS = 2
ESTABLISHED = "01"
Conn = TypeVar("Conn")
TRIES = 60  # connections until the kernel gives the wanted worker one: 2^-60 to miss by chance


@contextmanager
def serving_workers(folder: Path, extra: dict[str, str] | None = None) -> Iterator[Served]:
    settings = {
        "MAILSTACK_WORKERS": str(WORKERS),
        "MAILSTACK_ALLOW_PLAINTEXT_AUTH": "true",
        "MAILSTACK_IMAP_POLL_INTERVAL": "600",  # a push seen in the tests comes from the bus, not a poll
        **(extra or {}),
    }
    with running_serve(folder, settings) as served:  # ready: every worker's /ready answers 200
        asyncio.run(create_accounts(served, folder))
        yield served


async def create_accounts(served: Served, folder: Path) -> None:
    client = open_client(f"127.0.0.1:{served.ports['mailstore']}", folder / "data")
    try:
        for name in (USER, OTHER):
            await client.admin.CreateAccount(pb.CreateAccountRequest(name=name, password=PASSWORD))
    finally:
        await client.channel.close(None)


def workers_of(served: Served) -> list[int]:
    pids = served.worker_pids()
    assert len(pids) == WORKERS, pids
    return pids


def owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    """The worker holding the accepted end of the connection from client_port (from /proc)."""
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        if local == server_port and remote == client_port and fields[3] == ESTABLISHED:
            inode = fields[9]
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def on_worker(
    served: Served, pid: int, port: str, connect: Callable[[int], Conn], close: Callable[[Conn], None]
) -> Conn:
    """A connection (greeted, so accepted) that the kernel gave to worker `pid`: reconnect until then."""
    pids = workers_of(served)
    for _ in range(TRIES):
        conn = connect(served.ports[port])
        sock = getattr(conn, "sock", None)
        assert isinstance(sock, socket.socket)
        if owner(pids, served.ports[port], sock.getsockname()[1]) == pid:
            return conn
        close(conn)
    raise AssertionError(f"worker {pid} never got a {port} connection")


def imap_on(served: Served, pid: int) -> imaplib.IMAP4:
    return on_worker(
        served, pid, "imap", lambda port: imaplib.IMAP4("127.0.0.1", port, timeout=15), imaplib.IMAP4.shutdown
    )


def smtp_on(served: Served, pid: int) -> smtplib.SMTP:
    return on_worker(served, pid, "smtp", lambda port: smtplib.SMTP("127.0.0.1", port, timeout=15), smtplib.SMTP.close)


def pop3_on(served: Served, pid: int) -> poplib.POP3:
    return on_worker(served, pid, "pop3", lambda port: poplib.POP3("127.0.0.1", port, timeout=15), poplib.POP3.close)


def message(n: int) -> bytes:
    return f"From: a@remote.test\r\nTo: {USER}\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode()


def append_many(imap: imaplib.IMAP4, first: int, count: int, uids: list[int]) -> None:
    for n in range(first, first + count):
        status, data = imap.append("INBOX", "", None, message(n))
        assert status == "OK", data
        found = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
        assert found, data
        uids.append(int(found.group(1)))


def test_appends_through_both_workers_get_distinct_increasing_uids(tmp_path: Path) -> None:
    with serving_workers(tmp_path) as served:
        first, second = workers_of(served)
        clients = [imap_on(served, first), imap_on(served, second)]
        for imap in clients:
            imap.login(USER, PASSWORD)
        uids: list[list[int]] = [[], []]
        threads = [threading.Thread(target=append_many, args=(clients[i], 100 * i, 25, uids[i])) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(len(u) == 25 for u in uids), "an APPEND failed (see the thread's error above)"
        for u in uids:
            assert u == sorted(u) and len(set(u)) == len(u)  # each client's UIDs rise
        assert not set(uids[0]) & set(uids[1])  # never one UID twice across the workers
        clients[0].select("INBOX")
        _, found = clients[0].uid("SEARCH", "ALL")
        assert sorted(int(u) for u in found[0].split()) == sorted(uids[0] + uids[1])  # nothing lost
        for imap in clients:
            imap.logout()
    assert served.proc.returncode == 0, served.log()[-3000:]  # SIGTERM: both drained, a clean exit
    assert "database is locked" not in served.log()


def idle_until(imap: imaplib.IMAP4, wanted: bytes, seconds: float) -> bytes:
    """Lines of an IDLE (RFC 2177) until one holds `wanted`."""
    imap.sock.settimeout(seconds)
    seen = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = imap.readline()
        seen += line
        if wanted in line:
            return seen
    raise AssertionError(f"no {wanted!r} within {seconds} s: {seen!r}")


def test_an_idle_on_one_worker_hears_what_the_other_stores_despite_garbage_on_its_socket(tmp_path: Path) -> None:
    with serving_workers(tmp_path) as served:
        first, second = workers_of(served)
        sockets = tmp_path / "data" / "workers"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as attacker:
            for i in range(WORKERS):
                attacker.sendto(b"\xffnot an event", str(sockets / f"{i}.sock"))
                attacker.sendto(b"{" + b"x" * 100_000, str(sockets / f"{i}.sock"))
        idler = imap_on(served, first)
        idler.login(USER, PASSWORD)
        idler.select("INBOX")
        idler.send(b"i1 IDLE\r\n")
        assert idler.readline().startswith(b"+")
        writer = imap_on(served, second)
        writer.login(USER, PASSWORD)
        assert writer.append("INBOX", "", None, message(1))[0] == "OK"
        idle_until(idler, b"* 1 EXISTS", 10)
        with smtp_on(served, second) as smtp:
            smtp.sendmail("a@remote.test", [USER], message(2))
        idle_until(idler, b"* 2 EXISTS", 10)
        idler.send(b"DONE\r\n")
        assert b"i1 OK" in idle_until(idler, b"i1 ", 10)
        idler.logout()
        writer.logout()
        log = served.log()
    assert log.count("dropped a datagram on the worker event socket") >= 2 * WORKERS, log[-3000:]


async def list_then_kick(served: Served, folder: Path) -> tuple[list[int], int]:
    """Until every answer lists two frontends (each call on a new connection, so either worker may
    answer), then kick USER: (frontends per answer, sessions the kick covers)."""
    deadline, answers = time.monotonic() + 10, [0]
    while time.monotonic() < deadline:
        answers = []
        for _ in range(4):
            client = open_client(f"127.0.0.1:{served.ports['mailstore']}", folder / "data")
            try:
                reply = await client.admin.ListSessions(pb.ListSessionsRequest(account=USER))
            finally:
                await client.channel.close(None)
            answers.append(len({s.frontend for s in reply.sessions}))
        if answers == [2] * 4:
            break
        await asyncio.sleep(0.3)
    client = open_client(f"127.0.0.1:{served.ports['mailstore']}", folder / "data")
    try:
        kicked = await client.admin.KickSessions(pb.KickSessionsRequest(account=USER))
    finally:
        await client.channel.close(None)
    return answers, int(kicked.sessions)


def closed_by_kick(imap: imaplib.IMAP4, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            imap.noop()
        except imaplib.IMAP4.abort:
            imap.shutdown()
            return True
        time.sleep(0.3)
    return False


def test_who_and_kick_see_the_sessions_of_both_workers(tmp_path: Path) -> None:
    with serving_workers(tmp_path, {"MAILSTACK_SESSION_REPORT_SECONDS": "1"}) as served:
        first, second = workers_of(served)
        clients = [imap_on(served, first), imap_on(served, second)]
        for imap in clients:
            imap.login(USER, PASSWORD)
        answers, kicked = asyncio.run(list_then_kick(served, tmp_path))
        assert answers == [2] * 4, answers  # whichever worker answers lists both workers' sessions
        assert kicked == 2
        assert all(closed_by_kick(imap, 10) for imap in clients)


def test_wrong_passwords_on_one_worker_count_on_the_other(tmp_path: Path) -> None:
    # ADR 0046: N workers must not give a guesser N budgets (ADR 0011's limit per client IP)
    limits = {"MAILSTACK_AUTH_MAX_ATTEMPTS_PER_IP": "4", "MAILSTACK_IMAP_AUTH_FAILURE_DELAY_MS": "0"}
    with serving_workers(tmp_path, limits) as served:
        first, second = workers_of(served)
        for worker in (first, second, first, second):
            imap = imap_on(served, worker)
            try:
                with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
                    imap.login(USER, "wrong-guess")
            finally:
                imap.shutdown()
        for worker in (first, second):  # four in all: refused on either worker, right password or not
            imap = imap_on(served, worker)
            try:
                with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):  # RFC 5530, not a wrong password
                    imap.login(USER, PASSWORD)
            finally:
                imap.shutdown()


def test_the_healthcheck_asks_every_worker_and_fails_on_a_stuck_one(tmp_path: Path) -> None:
    with serving_workers(tmp_path) as served:
        check = [sys.executable, "-m", "mailstack", "healthcheck"]
        assert subprocess.run(check, env=served.env, capture_output=True, timeout=30).returncode == 0
        stuck = workers_of(served)[1]
        os.kill(stuck, signal.SIGSTOP)  # alive, listening, answering nothing: its connections hang
        try:
            result = subprocess.run(check, env=served.env, capture_output=True, text=True, timeout=30)
        finally:
            os.kill(stuck, signal.SIGCONT)
        assert result.returncode == 1
        assert re.search(r"worker [01] \(/ready on port \d+\)", result.stderr), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert subprocess.run(check, env=served.env, capture_output=True, timeout=30).returncode == 0


def test_serve_by_default_runs_a_worker_per_cpu_and_each_one_serves(tmp_path: Path) -> None:
    # ADR 0047: the all-in-one `mailstack serve` uses every usable CPU unless told otherwise
    expected = min(usable_cpus(), AUTO_WORKERS_MAX)
    settings = {"MAILSTACK_ALLOW_PLAINTEXT_AUTH": "true"}
    with running_serve(tmp_path, settings, default_workers=True) as served:
        assert "MAILSTACK_WORKERS" not in served.env
        asyncio.run(create_accounts(served, tmp_path))
        pids = served.worker_pids()
        assert len(pids) == (expected if expected > 1 else 0), pids
        unserved, port = set(pids), served.ports["imap"]
        for _ in range(TRIES * max(1, expected)):
            if not unserved:
                break
            imap = imaplib.IMAP4("127.0.0.1", port, timeout=15)
            try:
                assert imap.sock is not None
                unserved.discard(owner(pids, port, imap.sock.getsockname()[1]) or 0)
                assert imap.login(USER, PASSWORD)[0] == "OK"
            finally:
                imap.shutdown()
        assert not unserved, f"workers that served no login: {unserved}"


def test_serve_by_default_is_one_process_where_workers_cannot_run_and_says_why(tmp_path: Path) -> None:
    env, ports = serve_env(tmp_path, {"MAILSTACK_BLOB_URL": "memory://"}, default_workers=True)
    env["MAILSTACK_METRICS_PORT"] = str(ports["metrics"])
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve"], env=env, stdout=out, stderr=out)
    try:
        served = Served(proc, env, ports, log)
        deadline = time.monotonic() + 60
        while not served.ready():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert served.worker_pids() == []  # the memory:// store is one process's own: one process
        if usable_cpus() > 1:
            assert "one process, not one per CPU" in log.read_text() and "memory://" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_pop3_maildrop_lock_holds_across_workers(tmp_path: Path) -> None:
    with serving_workers(tmp_path) as served:
        first, second = workers_of(served)
        holder, other = pop3_on(served, first), pop3_on(served, second)
        holder.user(USER)
        holder.pass_(PASSWORD)
        other.user(USER)
        with pytest.raises(poplib.error_proto, match=r"IN-USE"):  # RFC 2449 §8.1.2
            other.pass_(PASSWORD)
        other.close()
        holder.quit()  # the lock goes with the session: the other worker may take it now
        again = pop3_on(served, second)
        again.user(USER)
        again.pass_(PASSWORD)
        again.quit()


def test_workers_whose_supervisor_is_killed_stop_and_free_the_ports(tmp_path: Path) -> None:
    with serving_workers(tmp_path) as served:
        pids = workers_of(served)
        served.proc.kill()
        served.proc.wait(10)
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", served.ports["imap"]))


def test_sighup_reaches_every_worker_and_stops_none(tmp_path: Path) -> None:
    with serving_workers(tmp_path) as served:
        served.proc.send_signal(signal.SIGHUP)  # ADR 0031: reload the TLS certificates
        deadline = time.monotonic() + 10
        while served.log().count("SIGHUP: reloading TLS certificates") < WORKERS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served.log().count("SIGHUP: reloading TLS certificates") == WORKERS, served.log()[-3000:]
        assert served.proc.poll() is None and served.ready()


def test_a_second_ctrl_c_stops_the_workers_at_once(tmp_path: Path) -> None:
    with serving_workers(tmp_path) as served:
        pids = workers_of(served)
        sender = smtp_on(served, pids[0])  # a transfer in DATA holds a graceful stop for its grace period
        sender.ehlo("client.test")
        sender.mail("a@remote.test")
        sender.rcpt(USER)
        assert sender.docmd("DATA")[0] == 354
        sender.send(b"Subject: half\r\n\r\nthe rest never comes")
        served.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        served.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        served.proc.wait(10)
        assert time.monotonic() - started < 5
        assert served.proc.returncode != 0
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        sender.close()


def test_a_worker_killed_stops_serve_with_an_error(tmp_path: Path) -> None:
    with serving_workers(tmp_path) as served:
        first, second = workers_of(served)
        os.kill(second, signal.SIGKILL)
        served.proc.wait(30)
        assert served.proc.returncode not in (0, None)
        assert f"pid {second}) exited" in served.log()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{first}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the survivor drains and exits, freeing the ports
        assert not Path(f"/proc/{first}").exists()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", served.ports["imap"]))


@pytest.mark.parametrize(
    ("extra", "args", "words"),
    [
        ({"MAILSTACK_WORKERS": "2"}, ["imap"], "all-in-one"),
        ({"MAILSTACK_WORKERS": "0"}, [], "MAILSTACK_WORKERS=0"),
        ({"MAILSTACK_WORKERS": "many"}, [], "MAILSTACK_WORKERS=many"),
        ({"MAILSTACK_WORKERS": "2", "MAILSTACK_IMAP_PORT": "0"}, [], "MAILSTACK_IMAP_PORT=0"),
        ({"MAILSTACK_WORKERS": "2", "MAILSTACK_BLOB_URL": "memory://"}, [], "memory://"),
    ],
)
def test_what_workers_cannot_do_is_refused_in_one_line(
    tmp_path: Path, extra: dict[str, str], args: list[str], words: str
) -> None:
    env, _ = serve_env(tmp_path, extra)
    done = subprocess.run(
        [sys.executable, "-m", "mailstack", "serve", *args], env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "data" / "workers").exists()  # nothing started
