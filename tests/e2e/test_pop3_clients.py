"""Real POP3 clients (fetchmail, getmail6, curl, poplib) against `mailstack serve pop3` as its own
process, over a mailstore process. What each client sends is in ../shared/clients/."""

from __future__ import annotations

import asyncio
import os
import poplib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailstack.services.common.config import env_name
from mailstack.services.common.tls import client_ssl_context, ensure_self_signed
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.mailstore import MailstoreProcess, deliver, identity_env, open_client
from tests.fixtures.pop3 import Pop3Process

pytestmark = pytest.mark.slow

PASSWORD = "pw-123456"
TLS_HOST = "localhost"  # fetchmail checks the name; the certificate covers DNS:localhost


@dataclass
class Servers:
    work: Path
    mailstore: MailstoreProcess
    pop3: Pop3Process
    cert: Path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    for tool in ("fetchmail", "getmail", "curl"):
        assert shutil.which(tool), f"{tool} missing: run scripts/install_clients.sh (Debian packages)"
    work = tmp_path_factory.mktemp("pop3-clients")
    cert, key = work / "tls" / "cert.pem", work / "tls" / "key.pem"
    ensure_self_signed(cert, key, TLS_HOST)
    mailstore = MailstoreProcess(work / "mailstore")
    mailstore.start()
    pop3 = Pop3Process(
        work / "pop3",
        mailstore.address,
        {env_name("tls_cert"): str(cert), env_name("tls_key"): str(key), **identity_env(mailstore.data_dir, "pop3")},
    )
    try:
        pop3.start()
        yield Servers(work, mailstore, pop3, cert)
    finally:
        pop3.stop()
        mailstore.stop()


def message(subject: str, body: str = "hello\r\n") -> bytes:
    return f"From: sender@remote.test\r\nTo: x@example.test\r\nSubject: {subject}\r\n\r\n{body}".encode()


async def account_with(servers: Servers, name: str, messages: list[bytes]) -> str:
    client = open_client(servers.mailstore.address, servers.mailstore.data_dir, servers.mailstore.send_address)
    try:
        await client.admin.CreateAccount(pb.CreateAccountRequest(name=name, password=PASSWORD))
        for data in messages:
            await deliver(client, [name], data)
    finally:
        await client.channel.close()
    return name


async def inbox_uids(servers: Servers, account: str) -> list[int]:
    client = open_client(servers.mailstore.address, servers.mailstore.data_dir, servers.mailstore.send_address)
    try:
        request = pb.FetchMetadataRequest(account=account, mailbox="INBOX", fields=pb.MetadataFields(size=True))
        return [m.uid async for batch in client.store.FetchMetadata(request) for m in batch.messages]
    finally:
        await client.channel.close()


def text(data: bytes) -> str:
    """What subprocess.run(text=True) makes of bytes (universal newlines)."""
    return data.decode().replace("\r\n", "\n")


async def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def test_fetchmail_keep_twice_then_delete(servers: Servers, tmp_path: Path) -> None:
    user = await account_with(servers, "fetchmail@example.test", [message("fm-one"), message("fm-two")])
    out = tmp_path / "out"
    out.mkdir()
    mda = tmp_path / "mda.sh"
    mda.write_text('#!/bin/sh\nf="$1/$(date +%s%N).$$.eml"\ncat > "$f.tmp" && mv "$f.tmp" "$f"\n')
    mda.chmod(0o755)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\nset no syslog\n"
        f"poll 127.0.0.1 service {servers.pop3.port} protocol POP3 uidl\n"
        f'  user "{user}" password "{PASSWORD}" is "{os.environ.get("USER") or "root"}" here\n'
        f"  sslproto 'TLS1.2+' sslcertck sslcertfile '{servers.cert}' sslcommonname '{TLS_HOST}'\n"
        f'  mda "{mda} {out}"\n'
    )
    rc.chmod(0o600)
    env = {**os.environ, "FETCHMAILHOME": str(tmp_path)}
    fetchmail = ["fetchmail", "-f", str(rc), "--nodetach", "-v", "-v"]

    first = await run([*fetchmail, "--keep"], tmp_path, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "POP3> STLS" in first.stdout + first.stderr  # it upgraded, as CAPA offered
    subjects = sorted(re.search(rb"^Subject: (\S+)", p.read_bytes(), re.M)[1] for p in out.glob("*.eml"))  # type: ignore[index]
    assert subjects == [b"fm-one", b"fm-two"]
    assert len(await inbox_uids(servers, user)) == 2

    second = await run([*fetchmail, "--keep"], tmp_path, env)
    assert second.returncode == 1, second.stdout + second.stderr  # 1 = no new mail (UIDL bookkeeping)
    assert len(list(out.glob("*.eml"))) == 2

    third = await run([*fetchmail, "--nokeep", "--fetchall"], tmp_path, env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "POP3> DELE" in third.stdout + third.stderr
    assert await inbox_uids(servers, user) == []  # QUIT committed the deletions


def shared_maildir() -> Path:
    """getmail refuses to deliver as root: then it delivers as nobody, who must reach the Maildir
    (pytest's tmp dirs are private to root, so the Maildir lives in its own /tmp dir)."""
    box = Path(tempfile.mkdtemp(prefix="pop3-getmail-"))
    box.chmod(0o755)
    maildir = box / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    if os.getuid() == 0:
        for path in [maildir, *maildir.iterdir()]:
            shutil.chown(path, "nobody")
    return box


async def test_getmail_over_implicit_tls(servers: Servers, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    user = await account_with(servers, "getmail@example.test", [message("gm-one")])
    box = shared_maildir()
    request.addfinalizer(lambda: shutil.rmtree(box, ignore_errors=True))
    maildir = box / "Maildir"
    state = tmp_path / "state"
    state.mkdir()
    dest_user = "user = nobody" if os.getuid() == 0 else ""

    def rc_file(name: str, read_all: bool, delete: bool) -> Path:
        path = tmp_path / name
        path.write_text(
            "[retriever]\ntype = SimplePOP3SSLRetriever\n"
            f"server = {TLS_HOST}\nport = {servers.pop3.tls_port}\nusername = {user}\npassword = {PASSWORD}\n"
            f"ca_certs = {servers.cert}\n\n"
            f"[destination]\ntype = Maildir\npath = {maildir}/\n{dest_user}\n\n"
            f"[options]\nverbose = 2\nread_all = {read_all}\ndelete = {delete}\n"
        )
        return path

    getmail = ["getmail", "--getmaildir", str(state), "--rcfile"]
    keep = rc_file("keep", False, False)
    first = await run([*getmail, str(keep)], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 messages (" in first.stdout and "retrieved" in first.stdout, first.stdout
    delivered = list((maildir / "new").iterdir())
    assert len(delivered) == 1 and b"Subject: gm-one" in delivered[0].read_bytes()

    second = await run([*getmail, str(keep)], tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 messages" in second.stdout and "not retrieved (seen)" in second.stdout, second.stdout

    third = await run([*getmail, str(rc_file("delete", True, True))], tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert await inbox_uids(servers, user) == []


async def test_curl_list_retr_uidl(servers: Servers, tmp_path: Path) -> None:
    user = await account_with(servers, "curl@example.test", [message("curl-one"), message("curl-two")])
    login = ["--user", f"{user}:{PASSWORD}", "--cacert", str(servers.cert), "-s", "-S"]
    stls = f"pop3://{TLS_HOST}:{servers.pop3.port}/"

    listing = await run(["curl", *login, "--ssl-reqd", stls], tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.replace("\r", "").splitlines()
    sizes = [len(message("curl-one")), len(message("curl-two"))]
    assert lines == [f"1 {sizes[0]}", f"2 {sizes[1]}"]

    retr = await run(["curl", *login, "--ssl-reqd", stls + "2"], tmp_path)
    assert retr.returncode == 0, retr.stderr
    assert retr.stdout == text(message("curl-two"))

    uidl = await run(["curl", *login, "--ssl-reqd", "-X", "UIDL", stls], tmp_path)
    assert uidl.returncode == 0, uidl.stderr
    assert len({line.split()[1] for line in uidl.stdout.splitlines()}) == 2

    stat = await run(["curl", *login, "--ssl-reqd", "-v", "-X", "STAT", "-I", stls], tmp_path)
    assert stat.returncode == 0 and f"< +OK 2 {sum(sizes)}" in stat.stderr, stat.stderr

    implicit = await run(["curl", *login, f"pop3s://{TLS_HOST}:{servers.pop3.tls_port}/1"], tmp_path)
    assert implicit.returncode == 0 and implicit.stdout == text(message("curl-one")), implicit.stderr

    # plaintext login before STLS is refused (allow_plaintext_auth is off)
    plain = await run(["curl", *login, f"pop3://127.0.0.1:{servers.pop3.port}/"], tmp_path)
    assert plain.returncode != 0
    assert len(await inbox_uids(servers, user)) == 2


async def test_poplib_stls_and_pop3_ssl(servers: Servers) -> None:
    dotted = b"Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\n8bit \xe9\xff\x80\r\n"
    user = await account_with(servers, "poplib@example.test", [message("py-one"), dotted])
    context = client_ssl_context(servers.cert)

    def stls_session() -> None:
        client = poplib.POP3(TLS_HOST, servers.pop3.port, timeout=30)
        try:
            assert "STLS" in client.capa() and "USER" not in client.capa()
            client.stls(context)
            assert "USER" in client.capa() and "STLS" not in client.capa()
            client.user(user)
            client.pass_(PASSWORD)
            assert client.stat() == (2, len(message("py-one")) + len(dotted))
            assert len(client.uidl()[1]) == 2
            _, lines, _ = client.retr(2)
            assert b"\r\n".join(lines) + b"\r\n" == dotted  # dot-stuffing undone, 8-bit intact
            assert client.top(1, 0)[1][-1] == b""  # header and the blank line
            client.dele(1)
            client.rset()
            client.quit()
        finally:
            client.close()

    def ssl_session() -> None:
        client = poplib.POP3_SSL(TLS_HOST, servers.pop3.tls_port, context=context, timeout=30)
        try:
            client.user(user)
            client.pass_(PASSWORD)
            assert client.stat()[0] == 2  # RSET above kept message 1
            client.quit()
        finally:
            client.close()

    await asyncio.to_thread(stls_session)
    await asyncio.to_thread(ssl_session)
