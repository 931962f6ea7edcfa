"""`mailstack who` and `mailstack kick` (doveadm who / kick): IMAP and POP3 sessions listed as the
frontends report them, and an account's sessions closed with a goodbye while others go on. Both on
the embedded shape (directory in the mailstore's memory) and on the deployed one (two IMAP processes
and POP3 reporting to a mailstore whose directory is in a real Valkey)."""

from __future__ import annotations

import imaplib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env
from tests.fixtures.topology import Topology, admin_channel, running_topology

REPORT = "1"  # seconds between reports: a kick lands within about that
WAIT = 10.0


def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {WAIT} s: {what}")


def kicked_imap(client: imaplib.IMAP4) -> bool:
    """The session ended with `* BYE session closed by the administrator` (RFC 9051 §7.1.5)."""
    try:
        client.noop()
    except imaplib.IMAP4.abort as e:
        client.shutdown()
        return "closed by the administrator" in str(e)
    return False


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


# ---------------------------------------------------------------- embedded: one process, memory


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("who-kick"), session_report_seconds=int(REPORT)) as e:
        yield e


def listed(env: ImapEnv, account: str = "") -> list[pb.SessionInfo]:
    reply = env.run(lambda: env.client.admin.ListSessions(pb.ListSessionsRequest(account=account)))
    return list(reply.sessions)


def test_who_lists_logged_in_sessions_only(env: ImapEnv) -> None:
    alice = env.new_account()
    anonymous = imaplib.IMAP4("127.0.0.1", env.port())  # connected, not logged in: not a session of anyone
    client = imaplib.IMAP4("127.0.0.1", env.port())
    client.login(alice, PASSWORD)
    before = time.time()
    [session] = until(lambda: listed(env, alice), "alice listed")
    assert (session.protocol, session.account, session.remote_ip, session.tls) == ("imap", alice, "127.0.0.1", False)
    assert before - 60 < session.started <= before + 1
    client.logout()
    until(lambda: not listed(env, alice), "alice gone after LOGOUT")
    anonymous.shutdown()


def test_kick_closes_the_accounts_sessions_with_bye_and_spares_others(env: ImapEnv) -> None:
    alice, bob = env.new_account(), env.new_account()
    clients = [imaplib.IMAP4("127.0.0.1", env.port()) for _ in range(3)]
    for client, user in zip(clients, (alice, alice, bob), strict=True):
        client.login(user, PASSWORD)
    clients[1].select("INBOX")
    until(lambda: len(listed(env, alice)) == 2, "both alice sessions listed")
    reply = env.run(lambda: env.client.admin.KickSessions(pb.KickSessionsRequest(account=alice)))
    assert reply.sessions == 2
    until(lambda: kicked_imap(clients[0]), "first alice session closed")
    until(lambda: kicked_imap(clients[1]), "selected alice session closed")
    assert clients[2].noop()[0] == "OK"  # bob is not touched
    # A login after the order is not covered by it: the order names sessions started before it.
    again = imaplib.IMAP4("127.0.0.1", env.port())
    again.login(alice, PASSWORD)
    time.sleep(2.5 * float(REPORT))
    assert again.noop()[0] == "OK"
    again.logout()
    clients[2].logout()


@pytest.mark.parametrize(
    "request_",
    [pb.KickSessionsRequest(account="not an address"), pb.KickSessionsRequest(account="a@x.test", protocol="smtp")],
)
def test_kick_refuses_bad_requests(env: ImapEnv, request_: pb.KickSessionsRequest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        env.run(lambda: env.client.admin.KickSessions(request_))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- deployed: processes, Valkey


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    def tune(topo: Topology) -> None:
        for service in topo.services:
            service.env["MAILSTACK_SESSION_REPORT_SECONDS"] = REPORT

    with running_topology(tmp_path_factory.mktemp("who-kick-topology"), [{}, {}], tune=tune) as topo:
        yield topo


def cli(topo: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with the deployment's admin identity (as `kubectl exec` in the mailstore pod has it)."""
    env = {**os.environ, **topo.identities["admin"], "MAILSTACK_DATA_DIR": str(topo.mailstore.log_path.parent)}
    command = [sys.executable, "-m", "mailstack", *args, "--mailstore", topo.mailstore_addr]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.slow
def test_who_and_kick_across_frontend_processes(topology: Topology) -> None:
    topo = topology
    admin = pbg.AdminStub(admin_channel(topo))
    alice, bob = "alice-who@example.test", "bob-who@example.test"
    for name in (alice, bob):
        admin.CreateAccount(pb.CreateAccountRequest(name=name, password=PASSWORD), timeout=10)
    with topo.diagnose():
        imap1 = imaplib.IMAP4("127.0.0.1", topo.imaps[0].ports["imap"])
        imap2 = imaplib.IMAP4("127.0.0.1", topo.imaps[1].ports["imap"])
        imap3 = imaplib.IMAP4("127.0.0.1", topo.imaps[1].ports["imap"])
        imap1.login(alice, PASSWORD)
        imap2.login(alice, PASSWORD)
        imap3.login(bob, PASSWORD)
        pop = socket.create_connection(("127.0.0.1", topo.pop3.ports["pop3"]), timeout=10)
        read_line(pop)
        for line in (f"USER {alice}", f"PASS {PASSWORD}"):
            pop.sendall(line.encode() + b"\r\n")
            assert read_line(pop).startswith(b"+OK")

        def who() -> list[dict[str, Any]]:
            done = cli(topo, "who", "--sessions", "--json")
            assert done.returncode == 0, done.stderr
            return list(json.loads(done.stdout))

        sessions = until(lambda: (s := who()) and len(s) == 4 and s, "four sessions from three processes")
        by_account = {(s["account"], s["protocol"]) for s in sessions}
        assert by_account == {(alice, "imap"), (alice, "pop3"), (bob, "imap")}
        assert len({s["frontend"] for s in sessions}) == 3  # imap-1, imap-2 and pop3
        summary = cli(topo, "who", alice)
        assert summary.returncode == 0 and alice in summary.stdout and "pop3" in summary.stdout

        kicked = cli(topo, "kick", alice, "--json")
        assert kicked.returncode == 0, kicked.stderr
        assert json.loads(kicked.stdout)["sessions"] == 3
        until(lambda: kicked_imap(imap1), "alice on imap-1 closed")
        until(lambda: kicked_imap(imap2), "alice on imap-2 closed")
        pop.settimeout(WAIT)
        assert read_line(pop).startswith(b"-ERR [SYS/PERM] session closed by the administrator")
        assert imap3.noop()[0] == "OK"
        until(lambda: [(s["account"], s["protocol"]) for s in who()] == [(bob, "imap")], "only bob left")
        imap3.logout()
        pop.close()
