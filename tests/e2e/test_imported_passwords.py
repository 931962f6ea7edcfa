"""Users moved from Dovecot keep their passwords (hashes imported as they are, re-hashed to ours at
the first login), and a master login serves migrations and support (ADR 0037): real IMAP clients,
hashes made by the real `doveadm pw`, the real CLI."""

from __future__ import annotations

import base64
import imaplib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mailstack.services.common.config import env_name
from mailstack.v1 import mailstore_pb2 as pb

from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env
from tests.unit.test_imported_hashes import doveadm_hash

MASTER = "support@example.test"
OLD_PASSWORD = "Dovecot's old one"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("imported-passwords"), master_users=f" {MASTER.upper()} ,") as e:
        e.run(lambda: e.client.admin.CreateAccount(pb.CreateAccountRequest(name=MASTER, password=PASSWORD)))
        yield e


def stored_hash(env: ImapEnv, account: str) -> str:
    async def read() -> str:
        assert env.mailstore.core is not None
        record = await env.mailstore.core.stores.metadata.get_account(account)
        assert record is not None
        return record.password_hash

    return env.run(read)


def quoted(user: str) -> str:
    """imaplib sends the user name as it is; '*' is not an atom character (RFC 9051 §9), so a
    'user*master' login is a quoted string, as clients that follow the grammar send it."""
    return f'"{user}"' if "*" in user else user


def login(env: ImapEnv, user: str, password: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", env.port())
    client.login(quoted(user), password)
    return client


def refused(env: ImapEnv, user: str, password: str) -> bool:
    client = imaplib.IMAP4("127.0.0.1", env.port())
    try:
        client.login(quoted(user), password)
    except imaplib.IMAP4.error as err:
        assert "command error" not in str(err), err  # a NO, never a BAD from a malformed command
        return True
    finally:
        client.shutdown()
    return False


def create_with_hash(env: ImapEnv, name: str, password_hash: str) -> None:
    request = pb.CreateAccountRequest(name=name, password_hash=password_hash)
    env.run(lambda: env.client.admin.CreateAccount(request))


@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID", "SSHA512"])
def test_an_imported_hash_logs_in_and_becomes_ours(env: ImapEnv, scheme: str) -> None:
    name = f"moved-{scheme.lower()}@example.test"
    create_with_hash(env, name, doveadm_hash(scheme, OLD_PASSWORD))
    assert stored_hash(env, name).startswith("{" + scheme + "}")
    assert refused(env, name, OLD_PASSWORD + "x")
    assert stored_hash(env, name).startswith("{" + scheme + "}")  # a failed login changes nothing
    login(env, name, OLD_PASSWORD).logout()
    assert stored_hash(env, name).startswith("$scrypt$ln=")
    login(env, name, OLD_PASSWORD).logout()  # and the new hash holds the same password
    assert refused(env, name, "wrong")


def test_set_password_takes_a_hash_too(env: ImapEnv) -> None:
    name = env.new_account()
    request = pb.SetPasswordRequest(name=name, password_hash=doveadm_hash("SHA256-CRYPT", OLD_PASSWORD))
    env.run(lambda: env.client.admin.SetPassword(request))
    assert refused(env, name, PASSWORD)
    login(env, name, OLD_PASSWORD).logout()


@pytest.mark.parametrize(
    ("password", "password_hash", "message"),
    [
        ("", "{MD4}abcd", "not supported"),
        ("", "{BLF-CRYPT}$2y$31$" + "a" * 53, "cost 31"),
        ("", "$scrypt$ln=14,r=8,p=1$c2FsdA$a2V5", "give the password"),  # no laundering of our own format
        ("pw", "{PLAIN}pw", "not both"),
        ("", "", "password must be"),
    ],
)
def test_bad_hashes_are_refused_with_a_reason(env: ImapEnv, password: str, password_hash: str, message: str) -> None:
    request = pb.CreateAccountRequest(name="refused@example.test", password=password, password_hash=password_hash)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        env.run(lambda: env.client.admin.CreateAccount(request))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


# ---------------------------------------------------------------- master login


def test_master_login_with_dovecot_user_star_master(env: ImapEnv, caplog: pytest.LogCaptureFixture) -> None:
    user = env.new_account()
    own = login(env, user, PASSWORD)
    own.append("INBOX", None, None, b"Subject: mine\r\n\r\nbody\r\n")
    own.logout()
    with caplog.at_level(logging.WARNING, logger="mailstack.services.mailstore.core.auth"):
        client = login(env, f"{user}*{MASTER}", PASSWORD)  # the master's own password
    assert client.select("INBOX") == ("OK", [b"1"])  # the user's mailbox, not the master's
    client.logout()
    used = [r for r in caplog.records if r.getMessage() == "master login"]
    assert [(r.__dict__["master"], r.__dict__["account"]) for r in used] == [(MASTER, user)]


def test_master_login_with_sasl_plain_authzid(env: ImapEnv) -> None:
    user = env.new_account()
    client = imaplib.IMAP4("127.0.0.1", env.port())
    response = f"{user}\0{MASTER}\0{PASSWORD}".encode()
    assert client.authenticate("PLAIN", lambda _: response)[0] == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_master_login_refusals(env: ImapEnv, caplog: pytest.LogCaptureFixture) -> None:
    user, other = env.new_account(), env.new_account()
    assert refused(env, f"{user}*{MASTER}", "not the master's password")
    assert refused(env, f"{user}*{MASTER}", PASSWORD + "x")
    assert refused(env, f"nobody@example.test*{MASTER}", PASSWORD)  # no such target
    with caplog.at_level(logging.WARNING, logger="mailstack.services.mailstore.core.auth"):
        assert refused(env, f"{user}*{other}", PASSWORD)  # a user is not a master
    assert any(r.getMessage().startswith("master login refused") for r in caplog.records)
    client = imaplib.IMAP4("127.0.0.1", env.port())
    with pytest.raises(imaplib.IMAP4.error):  # nor through SASL authzid
        client.authenticate("PLAIN", lambda _: f"{user}\0{other}\0{PASSWORD}".encode())
    client.shutdown()


def test_without_master_users_the_star_form_is_an_ordinary_failed_login(tmp_path: Path) -> None:
    with imap_env(tmp_path) as plain:
        plain.run(lambda: plain.client.admin.CreateAccount(pb.CreateAccountRequest(name=MASTER, password=PASSWORD)))
        user = plain.new_account()
        assert refused(plain, f"{user}*{MASTER}", PASSWORD)
        client = imaplib.IMAP4("127.0.0.1", plain.port())
        with pytest.raises(imaplib.IMAP4.error):
            client.authenticate("PLAIN", lambda _: f"{user}\0{MASTER}\0{PASSWORD}".encode())
        client.shutdown()


# ---------------------------------------------------------------- mailstack user import passwd-file


def run_cli(env: ImapEnv, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mailstack", *args, "--mailstore", env.mailstore.address]
    cli_env = {**os.environ, env_name("data_dir"): str(env.settings.data_dir)}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=cli_env)


def test_passwd_file_import_then_login_with_old_passwords(env: ImapEnv, tmp_path: Path) -> None:
    sha = doveadm_hash("SHA512-CRYPT", OLD_PASSWORD)
    argon = doveadm_hash("ARGON2ID", "another one")
    lines = [
        "# Dovecot passwd-file",
        f"carol@example.test:{sha}:23000:23000::/home/carol::userdb_quota_rule=*:storage=1G",
        f"dave:{argon}:23000:23000::/home/dave::userdb_quota_rule=*:messages=500"
        " userdb_quota_rule2=Trash:storage=+100M",
        "eve@example.test:{MD4}abcd:::::",
        "broken-line-without-password",
        "",
    ]
    passwd = tmp_path / "users.passwd"
    passwd.write_text("\n".join(lines))
    done = run_cli(env, "user", "import", "passwd-file", str(passwd), "--domain", "example.test", "--json")
    assert done.returncode == 1, done.stderr  # two lines failed: reported, and the exit says so
    report = json.loads(done.stdout)
    results = {r["account"]: r["result"] for r in report["accounts"]}
    assert results == {"carol@example.test": "created", "dave@example.test": "created", "eve@example.test": "failed"}
    assert any("line 5" in e for e in report["errors"])
    assert any("Trash" in r["detail"] for r in report["accounts"] if r["account"] == "dave@example.test")
    login(env, "carol@example.test", OLD_PASSWORD).logout()
    client = login(env, "dave@example.test", "another one")
    assert client.getquotaroot("INBOX")[0] == "OK"
    client.logout()

    async def quotas() -> tuple[int, int]:
        carol = await env.client.admin.GetAccount(pb.GetAccountRequest(name="carol@example.test"))
        dave = await env.client.admin.GetAccount(pb.GetAccountRequest(name="dave@example.test"))
        return carol.quota_bytes, dave.quota_messages

    assert env.run(quotas) == (1 << 30, 500)

    # A second pass (the cutover) keeps what exists unless --update says otherwise.
    again = run_cli(env, "user", "import", "passwd-file", str(passwd), "--domain", "example.test", "--json")
    assert {r["account"]: r["result"] for r in json.loads(again.stdout)["accounts"]}["carol@example.test"] == "exists"
    passwd.write_text(
        f"carol@example.test:{doveadm_hash('SSHA512', 'rotated')}::::::userdb_quota_rule=*:messages=900\n"
        f"dave@example.test:{argon}\n"
    )
    updated = run_cli(env, "user", "import", "passwd-file", str(passwd), "--update")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "updated" in updated.stdout
    assert refused(env, "carol@example.test", OLD_PASSWORD)
    login(env, "carol@example.test", "rotated").logout()

    async def limits() -> tuple[tuple[int, int], tuple[int, int]]:
        carol = await env.client.admin.GetAccount(pb.GetAccountRequest(name="carol@example.test"))
        dave = await env.client.admin.GetAccount(pb.GetAccountRequest(name="dave@example.test"))
        return (carol.quota_bytes, carol.quota_messages), (dave.quota_bytes, dave.quota_messages)

    # A limit the line gives is set; one it does not give stays (a line with no rule changes none).
    assert env.run(limits) == ((1 << 30, 900), (0, 500))


def test_user_add_with_a_password_hash(env: ImapEnv) -> None:
    name = "frank@example.test"
    done = run_cli(env, "user", "add", name, "--password-hash", doveadm_hash("SHA512-CRYPT", OLD_PASSWORD))
    assert done.returncode == 0, done.stderr
    login(env, name, OLD_PASSWORD).logout()


def test_plain_hash_in_an_authzid_is_still_plain_text(env: ImapEnv) -> None:
    """A SASL PLAIN response whose authzid equals the user is an ordinary login (RFC 4616 §2)."""
    user = env.new_account()
    client = imaplib.IMAP4("127.0.0.1", env.port())
    encoded = base64.b64encode(f"{user}\0{user}\0{PASSWORD}".encode())
    assert client.authenticate("PLAIN", lambda _: base64.b64decode(encoded))[0] == "OK"
    client.logout()


def test_with_masters_configured_an_authzid_naming_oneself_is_an_ordinary_login(env: ImapEnv) -> None:
    """The bare login name and the full address are the same account (the only served domain)."""
    user = env.new_account()
    client = imaplib.IMAP4("127.0.0.1", env.port())
    response = f"{user}\0{user.split('@')[0]}\0{PASSWORD}".encode()
    assert client.authenticate("PLAIN", lambda _: response)[0] == "OK"
    client.logout()
