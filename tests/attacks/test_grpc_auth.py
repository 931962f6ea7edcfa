"""Issue 13 §1: the mailstore's gRPC API, attacked. Before ADR 0009 anyone who reached the port could
create accounts, set passwords, read any mailbox and mint Send tokens; every call below succeeded.

Real servers, real grpc clients: the embedded default (in-process, identities in DATA_DIR/grpc),
the CLI as a user runs it, and the multi-process topology configured as the manifests do."""

from __future__ import annotations

import imaplib
import logging
import os
import poplib
import smtplib
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mailstack.services.common.config import Settings
from mailstack.services.common.grpc_client import (
    TLS_CHANNEL_OPTIONS,
    Identity,
    IdentityError,
    identity_for,
    open_channel,
    open_sync_channel,
)
from mailstack.services.common.internal_ca import CALLERS, IDENTITIES, create_ca, data_folder, issue
from mailstack.services.mailstore.authz import POLICY, allowed
from mailstack.services.mailstore.server import MailstoreServer
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg
from prometheus_client import REGISTRY

from tests.fixtures.mailstore import health_check, identity_env, settings_for
from tests.fixtures.ports import free_port
from tests.fixtures.topology import (
    Topology,
    admin_channel,
    identity_of,
    running_topology,
)

ROOT = Path(__file__).resolve().parents[2]
PORTS = ("SMTP", "SUBMISSION", "SUBMISSIONS", "IMAP", "IMAPS", "POP3", "POP3S", "LMTP")
ALICE = "alice@example.test"
TIMEOUT = 10.0

# One cheap call per internal service, each one an attack when made by the wrong party.
INTERNAL_CALLS: dict[str, Callable[[grpc.aio.Channel], object]] = {
    "Admin.CreateAccount": lambda ch: pbg.AdminStub(ch).CreateAccount(
        pb.CreateAccountRequest(name="mallory@example.test", password="pw-mallory-1"), timeout=TIMEOUT
    ),
    "Mailstore.Authenticate": lambda ch: pbg.MailstoreStub(ch).Authenticate(
        pb.AuthenticateRequest(username=ALICE, password="guess"), timeout=TIMEOUT
    ),
    "SendAdmin.CreateToken": lambda ch: spbg.SendAdminStub(ch).CreateToken(
        spb.CreateTokenRequest(name="evil", from_domains=["bank.example"]), timeout=TIMEOUT
    ),
    "Outbound.LeaseOutbound": lambda ch: spbg.OutboundStub(ch).LeaseOutbound(
        spb.LeaseOutboundRequest(worker="evil", max_messages=1), timeout=TIMEOUT
    ),
}


async def status(awaitable: object) -> grpc.StatusCode:
    try:
        await awaitable  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def foreign_identity(name: str) -> Identity:
    """A certificate named `name` from a CA the mailstore does not trust."""
    ca, ca_key = create_ca("attacker CA")
    cert, key = issue(ca, ca_key, name)
    return Identity(name, ca, cert, key)


@asynccontextmanager
async def embedded(tmp_path: Path, **overrides: object) -> AsyncIterator[tuple[MailstoreServer, Settings]]:
    """The embedded default: a MailstoreServer that makes its CA and identities in DATA_DIR/grpc."""
    settings = settings_for(tmp_path / "data", **overrides)
    server = MailstoreServer(settings)
    await server.start()
    try:
        yield server, settings
    finally:
        await server.stop(0.5)


@asynccontextmanager
async def channel_as(address: str, identity: Identity) -> AsyncIterator[grpc.aio.Channel]:
    channel = open_channel(address, identity)
    try:
        yield channel
    finally:
        await channel.close(None)


def refusals(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mailstack.mailstore.authz" and r.getMessage() == message]


# ---------------------------------------------------------------- the embedded default


async def test_the_data_folder_holds_a_ca_and_one_identity_each_keys_0600(tmp_path: Path) -> None:
    async with embedded(tmp_path) as (_, settings):
        folder = data_folder(settings.data_dir)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
        for name in IDENTITIES:
            assert stat.S_IMODE((folder / f"{name}.key").stat().st_mode) == 0o600, name
            assert (folder / f"{name}.crt").exists()


async def test_without_a_certificate_nothing_is_callable(tmp_path: Path) -> None:
    async with embedded(tmp_path) as (server, settings):
        ca = identity_for(settings, "admin").ca
        no_cert = grpc.ssl_channel_credentials(root_certificates=ca)  # TLS, but no client certificate
        async with grpc.aio.secure_channel(server.address, no_cert, options=TLS_CHANNEL_OPTIONS) as channel:
            for name, call in INTERNAL_CALLS.items():
                # The TLS handshake asks for a certificate and refuses the connection without one.
                assert await status(call(channel)) == grpc.StatusCode.UNAVAILABLE, name
        async with grpc.aio.insecure_channel(server.address) as channel:  # plaintext: no TLS at all
            for name, call in INTERNAL_CALLS.items():
                assert await status(call(channel)) == grpc.StatusCode.UNAVAILABLE, name
        async with channel_as(server.address, identity_for(settings, "admin")) as admin:
            accounts = await pbg.AdminStub(admin).ListAccounts(pb.ListAccountsRequest(), timeout=TIMEOUT)
            assert [a.name for a in accounts.accounts] == []  # mallory was never created


async def test_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    async with embedded(tmp_path) as (server, settings):
        forged = foreign_identity("admin")
        # The forger trusts the real CA for the server (it can read the public ca.crt): still refused.
        real_ca = identity_for(settings, "admin").ca
        forged = Identity("admin", real_ca, forged.cert, forged.key)
        async with channel_as(server.address, forged) as channel:
            for name, call in INTERNAL_CALLS.items():
                assert await status(call(channel)) == grpc.StatusCode.UNAVAILABLE, name


async def test_each_frontend_may_call_only_what_it_needs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailstack.mailstore.authz")
    metric = ("mailstack_grpc_refusals_total", {"reason": "permission_denied"})
    refused_before = REGISTRY.get_sample_value(*metric) or 0.0
    async with embedded(tmp_path) as (server, settings):
        async with channel_as(server.address, identity_for(settings, "admin")) as admin:
            await pbg.AdminStub(admin).CreateAccount(pb.CreateAccountRequest(name=ALICE, password="pw-alice-12"))
        denied = grpc.StatusCode.PERMISSION_DENIED
        async with channel_as(server.address, identity_for(settings, "imap")) as imap:
            admin_stub, store = pbg.AdminStub(imap), pbg.MailstoreStub(imap)
            assert await status(admin_stub.CreateAccount(pb.CreateAccountRequest(name="x@example.test"))) == denied
            request = pb.SetPasswordRequest(name=ALICE, password="owned-by-imap")
            assert await status(admin_stub.SetPassword(request)) == denied
            request2 = pb.AddAliasRequest(address="@example.test", account=ALICE)
            assert await status(admin_stub.AddAlias(request2)) == denied
            token = spb.CreateTokenRequest(name="evil", from_domains=["example.test"])
            assert await status(spbg.SendAdminStub(imap).CreateToken(token)) == denied

            async def deliver() -> AsyncIterator[pb.DeliverRequest]:
                yield pb.DeliverRequest(envelope=pb.DeliverEnvelope(sender="x@y.test", recipients=[ALICE], size=3))
                yield pb.DeliverRequest(chunk=b"x\r\n")

            assert await status(store.Deliver(deliver())) == denied
            assert await status(store.ListMailboxes(pb.ListMailboxesRequest(account=ALICE))) == grpc.StatusCode.OK
        async with channel_as(server.address, identity_for(settings, "smtp")) as smtp:
            store = pbg.MailstoreStub(smtp)
            bodies = store.FetchBodies(pb.FetchBodiesRequest(account=ALICE, mailbox="INBOX"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in bodies:
                    pass
            assert refused.value.code() == denied
            assert await status(store.ListMailboxes(pb.ListMailboxesRequest(account=ALICE))) == denied
            assert await status(store.ResolveRecipient(pb.ResolveRecipientRequest(address=ALICE))) == grpc.StatusCode.OK
        async with channel_as(server.address, identity_for(settings, "pop3")) as pop3:
            assert await status(pbg.AdminStub(pop3).ListAccounts(pb.ListAccountsRequest())) == denied
            assert await status(pbg.MailstoreStub(pop3).CreateMailbox(pb.CreateMailboxRequest(account=ALICE))) == denied
        async with channel_as(server.address, identity_for(settings, "outbound")) as outbound:
            store = pbg.MailstoreStub(outbound)
            assert await status(store.Authenticate(pb.AuthenticateRequest(username=ALICE, password="x"))) == denied
            assert await status(pbg.AdminStub(outbound).ListAccounts(pb.ListAccountsRequest())) == denied
            lease = spb.LeaseOutboundRequest(worker="w1", max_messages=1)
            assert await status(spbg.OutboundStub(outbound).LeaseOutbound(lease, timeout=TIMEOUT)) == grpc.StatusCode.OK
    # Every refusal is logged with its caller and method; admin calls are logged with theirs.
    refused_calls = {(r.caller, r.method) for r in refusals(caplog, "grpc call refused")}  # type: ignore[attr-defined]
    assert ("imap", "/mailstack.v1.Admin/SetPassword") in refused_calls
    assert ("imap", "/mailstack.v1.Mailstore/Deliver") in refused_calls
    assert ("smtp", "/mailstack.v1.Mailstore/FetchBodies") in refused_calls
    assert ("outbound", "/mailstack.v1.Admin/ListAccounts") in refused_calls
    assert all(r.peer.startswith("ipv4:127.0.0.1:") for r in refusals(caplog, "grpc call refused"))  # type: ignore[attr-defined]
    admin_calls = {(r.caller, r.method) for r in refusals(caplog, "admin call")}  # type: ignore[attr-defined]
    assert admin_calls == {("admin", "/mailstack.v1.Admin/CreateAccount")}
    assert (REGISTRY.get_sample_value(*metric) or 0.0) - refused_before == len(refusals(caplog, "grpc call refused"))


async def test_sender_only_on_the_service_port_and_internal_services_only_on_the_internal_one(
    tmp_path: Path,
) -> None:
    async with embedded(tmp_path) as (server, settings):
        unimplemented = grpc.StatusCode.UNIMPLEMENTED
        send = spb.SendRequest(header=spb.SendHeader())
        async with channel_as(server.address, identity_for(settings, "admin")) as internal:
            assert await status(spbg.SenderStub(internal).Send(iter([send]), timeout=TIMEOUT)) == unimplemented
        async with grpc.aio.insecure_channel(server.send_address) as service:
            for name, call in INTERNAL_CALLS.items():
                assert await status(call(service)) == unimplemented, name
            # The Sender itself answers there, and wants its bearer token.
            code = await status(spbg.SenderStub(service).Send(iter([send]), timeout=TIMEOUT))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(service)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="mailstack.v1.Sender"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_service_port_can_be_tls(tmp_path: Path) -> None:
    from mailstack.services.common.tls import ensure_self_signed

    cert, key = tmp_path / "send.crt", tmp_path / "send.key"
    ensure_self_signed(cert, key, "localhost")
    async with embedded(tmp_path, send_tls_cert=str(cert), send_tls_key=str(key)) as (server, _):
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        target = server.send_address.replace("127.0.0.1", "localhost")
        async with grpc.aio.secure_channel(target, credentials) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert not health_check(server.send_address)  # plaintext is refused there now


async def test_reflection_is_off_by_default_and_admin_only_when_on(tmp_path: Path) -> None:
    async def list_services(channel: grpc.aio.Channel) -> grpc.StatusCode:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    async with embedded(tmp_path / "off") as (server, settings):
        async with channel_as(server.address, identity_for(settings, "admin")) as admin:
            assert await list_services(admin) == grpc.StatusCode.UNIMPLEMENTED
    async with embedded(tmp_path / "on", grpc_reflection=True) as (server, settings):
        async with channel_as(server.address, identity_for(settings, "admin")) as admin:
            assert await list_services(admin) == grpc.StatusCode.OK
        async with channel_as(server.address, identity_for(settings, "smtp")) as smtp:
            assert await list_services(smtp) == grpc.StatusCode.PERMISSION_DENIED
        async with grpc.aio.insecure_channel(server.send_address) as service:
            assert await list_services(service) == grpc.StatusCode.UNIMPLEMENTED


async def test_a_missing_identity_file_stops_the_start_not_the_checks(tmp_path: Path) -> None:
    """Explicit identity settings that point nowhere are an error, never a fallback to no TLS."""
    settings = settings_for(tmp_path, grpc_cert=str(tmp_path / "none.crt"), grpc_key=str(tmp_path / "none.key"))
    with pytest.raises(IdentityError, match=r"gRPC identity mailstore: .*No such file"):
        await MailstoreServer(settings).start()
    with pytest.raises(IdentityError, match="both"):
        identity_for(settings_for(tmp_path, grpc_cert=str(tmp_path / "a.crt")), "smtp")


async def test_kept_uids_and_uidls_only_through_the_admin_import(tmp_path: Path) -> None:
    # Issue 16: storing under a chosen UID or POP3 UIDL is for migrations only. A frontend may not
    # call Admin.ImportMessage, Mailstore.Append refuses the fields, and even the admin cannot put
    # a UID at or below one given out, nor a UIDL outside RFC 1939 §7's characters.
    def requests(uid: int, uidl: str = "") -> Iterator[pb.AppendRequest]:
        header = pb.AppendHeader(account=ALICE, mailbox="INBOX", size=9, uid=uid, pop3_uidl=uidl)
        return iter([pb.AppendRequest(header=header), pb.AppendRequest(chunk=b"a: b\r\n\r\nx")])

    async def arequests(uid: int, uidl: str = "") -> AsyncIterator[pb.AppendRequest]:
        for item in requests(uid, uidl):
            yield item

    async with embedded(tmp_path) as (server, settings):
        async with channel_as(server.address, identity_for(settings, "admin")) as admin:
            admin_stub = pbg.AdminStub(admin)
            await admin_stub.CreateAccount(pb.CreateAccountRequest(name=ALICE, password="pw-alice-12"))
            adopted = await admin_stub.ImportMailbox(
                pb.ImportMailboxRequest(account=ALICE, name="INBOX", uidvalidity=77)
            )
            assert adopted.uidvalidity == 77
            stored = await admin_stub.ImportMessage(arequests(5, "0000000500000077"))
            assert (stored.uid, stored.uidvalidity) == (5, 77)
            assert await status(admin_stub.ImportMessage(arequests(5))) == grpc.StatusCode.FAILED_PRECONDITION
            assert await status(admin_stub.ImportMessage(arequests(9, "bad uidl"))) == grpc.StatusCode.INVALID_ARGUMENT
            assert await status(admin_stub.ImportMessage(arequests(9, "x" * 71))) == grpc.StatusCode.INVALID_ARGUMENT
            refused = pb.ImportMailboxRequest(account=ALICE, name="INBOX", uidvalidity=78)
            assert await status(admin_stub.ImportMailbox(refused)) == grpc.StatusCode.FAILED_PRECONDITION
            assert await status(pbg.MailstoreStub(admin).Append(arequests(9))) == grpc.StatusCode.INVALID_ARGUMENT
        for frontend in ("imap", "pop3", "smtp"):
            async with channel_as(server.address, identity_for(settings, frontend)) as channel:
                denied = await status(pbg.AdminStub(channel).ImportMessage(arequests(10)))
                assert denied == grpc.StatusCode.PERMISSION_DENIED, frontend
                request = pb.ImportMailboxRequest(account=ALICE, name="INBOX", uidnext=1000)
                assert await status(pbg.AdminStub(channel).ImportMailbox(request)) == grpc.StatusCode.PERMISSION_DENIED
        async with channel_as(server.address, identity_for(settings, "imap")) as imap:
            assert await status(pbg.MailstoreStub(imap).Append(arequests(10))) == grpc.StatusCode.INVALID_ARGUMENT
            after = await pbg.MailstoreStub(imap).GetMailboxStatus(pb.MailboxStatusRequest(account=ALICE, name="INBOX"))
            assert (after.messages, after.uidnext, after.uidvalidity) == (1, 6, 77), "nothing refused was stored"


def test_the_table_covers_every_internal_rpc_and_denies_the_rest() -> None:
    """A new RPC is nobody's until it is added (fail closed); none of today's is forgotten."""
    for service in (pb.DESCRIPTOR.services_by_name["Mailstore"], spb.DESCRIPTOR.services_by_name["Outbound"]):
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            assert path in POLICY, f"{path} is callable by nobody"
            # the admin identity reaches mail only for `mailstack import` (reads, flags, expunges, subscribes)
            # and `mailstack mail` (search, fetch, move, expunge), by name
            admin_mail = ("CreateMailbox", "GetMailboxStatus", "Append", "ListMailboxes", "FetchMetadata",
                          "FetchBody", "StoreFlags", "Move", "Expunge", "Search", "Subscribe")  # fmt: skip
            assert "admin" not in allowed(path) or method.name in admin_mail
    assert allowed("/mailstack.v1.Admin/Fsck") == {"admin"}  # a later Admin RPC: admin-only at once
    assert allowed("/mailstack.v1.SendAdmin/Anything") == {"admin"}
    assert allowed("/mailstack.v1.Mailstore/NotYetWritten") == frozenset()
    assert allowed("/mailstack.v1.Sender/Send") == frozenset()  # not served on the internal port at all
    assert all(allowed(f"/mailstack.v1.Outbound/{m}") == {"outbound"} for m in ("LeaseOutbound", "ReportOutbound"))
    assert set().union(*POLICY.values()) <= {*CALLERS, "*"}


# ---------------------------------------------------------------- the CLI, end to end


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """`mailstack serve` (all-in-one) as a user starts it: zero configuration but a data folder and ports."""
    data = tmp_path / "data"
    listen = f"127.0.0.1:{free_port()}"
    send = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    env.update(
        MAILSTACK_DATA_DIR=str(data),
        MAILSTACK_MAILSTORE_LISTEN=listen,
        MAILSTACK_MAILSTORE_ADDR=listen,
        MAILSTACK_SEND_LISTEN=send,
        MAILSTACK_ORPHAN_SWEEP_SECONDS="0",
        MAILSTACK_ALLOW_PLAINTEXT_AUTH="true",
        MAILSTACK_PASSWORD_SCRYPT_LOG_N="10",
        **{f"MAILSTACK_{name}_PORT": str(free_port()) for name in PORTS},
    )
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailstack", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while not (health_check(send) and "data" in (tmp_path / "serve.log").read_text()):  # banner done
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield data, env
    finally:
        proc.terminate()
        proc.wait(20)


def mailstack(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailstack", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_cli_zero_config_and_explicit_identities(serving: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data, env = serving
    # Zero configuration: the CLI finds DATA_DIR/grpc/admin.* by itself.
    added = mailstack(env, "user", "add", ALICE, "--password-stdin", stdin="pw-alice-123\n")
    assert added.returncode == 0, added.stderr
    # Every frontend of the process calls with its own identity: SMTP delivers, IMAP and POP3 read.
    with smtplib.SMTP("127.0.0.1", int(env["MAILSTACK_SMTP_PORT"]), timeout=30) as smtp:
        assert smtp.sendmail("bob@remote.test", [ALICE], b"Subject: mTLS\r\n\r\nhello\r\n") == {}
    imap = imaplib.IMAP4("127.0.0.1", int(env["MAILSTACK_IMAP_PORT"]), timeout=30)
    try:
        imap.login(ALICE, "pw-alice-123")
        assert imap.select("INBOX") == ("OK", [b"1"])
    finally:
        imap.logout()
    pop3 = poplib.POP3("127.0.0.1", int(env["MAILSTACK_POP3_PORT"]), timeout=30)
    try:
        pop3.user(ALICE)
        pop3.pass_("pw-alice-123")
        assert pop3.stat()[0] == 1
    finally:
        pop3.quit()
    # Elsewhere (another folder, as in a Job): identity files given by settings, as `mailstack ca issue` writes.
    elsewhere = {k: v for k, v in env.items() if k != "MAILSTACK_DATA_DIR"}
    elsewhere["MAILSTACK_DATA_DIR"] = str(tmp_path / "job")
    refused = mailstack(elsewhere, "user", "list")
    assert refused.returncode == 1 and "no admin identity" in refused.stderr
    issued = mailstack(env, "ca", "issue", "admin", "--out", str(tmp_path / "secret-admin"))
    assert issued.returncode == 0, issued.stderr
    explicit = {
        **elsewhere,
        "MAILSTACK_GRPC_ADMIN_CERT": str(tmp_path / "secret-admin" / "tls.crt"),
        "MAILSTACK_GRPC_ADMIN_KEY": str(tmp_path / "secret-admin" / "tls.key"),
        "MAILSTACK_GRPC_CA": str(tmp_path / "secret-admin" / "ca.crt"),
    }
    listed = mailstack(explicit, "--json", "user", "list")
    assert listed.returncode == 0, listed.stderr
    assert ALICE in listed.stdout
    # A frontend's identity does not make an admin: the imap Secret in a Job is refused.
    as_imap = {**elsewhere, **identity_env(data, "imap")}
    denied = mailstack(as_imap, "user", "passwd", ALICE, "--password-stdin", stdin="owned-pass-1\n")
    assert denied.returncode == 1 and "imap may not call /mailstack.v1.Admin/SetPassword" in denied.stderr
    # The data folder's CA key never leaves it; its keys are the owner's alone.
    assert stat.S_IMODE((data / "grpc" / "admin.key").stat().st_mode) == 0o600


# ---------------------------------------------------------------- the multi-process topology


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    folder = tmp_path_factory.mktemp("grpc-auth-topology")
    with running_topology(folder) as topo:
        yield topo


@pytest.mark.slow
def test_topology_refuses_what_the_embedded_default_refuses(topology: Topology) -> None:
    def code(call: object) -> grpc.StatusCode:
        try:
            call()  # type: ignore[operator]
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    with admin_channel(topology) as admin:
        request = pb.CreateAccountRequest(name="topo-auth@example.test", password="pw-topo-123")
        assert code(lambda: pbg.AdminStub(admin).CreateAccount(request, timeout=TIMEOUT)) == grpc.StatusCode.OK
        send = spb.SendRequest(header=spb.SendHeader())
        assert code(lambda: spbg.SenderStub(admin).Send(iter([send]), timeout=TIMEOUT)) == grpc.StatusCode.UNIMPLEMENTED
    with open_sync_channel(topology.mailstore_addr, identity_of(topology, "imap")) as imap:
        set_password = pb.SetPasswordRequest(name="topo-auth@example.test", password="owned-pass-1")
        denied = code(lambda: pbg.AdminStub(imap).SetPassword(set_password, timeout=TIMEOUT))
        assert denied == grpc.StatusCode.PERMISSION_DENIED
    with open_sync_channel(topology.mailstore_addr, identity_of(topology, "smtp")) as smtp:
        lease = spb.LeaseOutboundRequest(worker="evil", max_messages=1)
        denied = code(lambda: spbg.OutboundStub(smtp).LeaseOutbound(lease, timeout=TIMEOUT))
        assert denied == grpc.StatusCode.PERMISSION_DENIED
    with open_sync_channel(topology.mailstore_addr, foreign_identity("admin")) as forged:
        listing = code(lambda: pbg.AdminStub(forged).ListAccounts(pb.ListAccountsRequest(), timeout=TIMEOUT))
        assert listing == grpc.StatusCode.UNAVAILABLE
    no_certificate = grpc.ssl_channel_credentials(root_certificates=identity_of(topology, "imap").ca)
    with grpc.secure_channel(topology.mailstore_addr, no_certificate, options=TLS_CHANNEL_OPTIONS) as anonymous:
        listing = code(lambda: pbg.AdminStub(anonymous).ListAccounts(pb.ListAccountsRequest(), timeout=TIMEOUT))
        assert listing == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(topology.mailstore_addr) as plain:
        listing = code(lambda: pbg.AdminStub(plain).ListAccounts(pb.ListAccountsRequest(), timeout=TIMEOUT))
        assert listing == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(topology.send_addr) as service:
        listing = code(lambda: pbg.AdminStub(service).ListAccounts(pb.ListAccountsRequest(), timeout=TIMEOUT))
        assert listing == grpc.StatusCode.UNIMPLEMENTED
    # The refusal is in the mailstore's JSON log with its caller (the manifests' MAILSTACK_LOG_FORMAT=json).
    deadline = time.monotonic() + 10
    log = ""
    while time.monotonic() < deadline:
        log = topology.mailstore.log_path.read_text(errors="replace")
        if '"caller": "imap"' in log:
            break
        time.sleep(0.2)
    lines = [line for line in log.splitlines() if '"grpc call refused"' in line]
    assert any('"caller": "imap"' in line and "/mailstack.v1.Admin/SetPassword" in line for line in lines), log[-2000:]
    assert any('"caller": "admin"' in line and '"admin call"' in line for line in log.splitlines())
