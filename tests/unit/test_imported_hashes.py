"""Password hashes as Dovecot writes them (made by the real `doveadm pw`), verified as they are;
and the hashes a hostile or broken passwd-file could hold, refused before they cost anything."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import pytest
from mailstack.services.mailstore import imported_hashes, passwords

PASSWORD = "Sécret 1:x"  # non-ASCII and a colon, as passwd-files meet them


def doveadm_hash(scheme: str, password: str = PASSWORD) -> str:
    doveadm = shutil.which("doveadm")
    assert doveadm, "doveadm missing: scripts/install_clients.sh installs dovecot-core"
    out = subprocess.run([doveadm, "pw", "-s", scheme, "-p", password], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize(
    "scheme",
    ["SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT", "ARGON2I", "ARGON2ID", "SSHA512", "SSHA256",
     "SSHA", "SHA512", "SHA256", "SHA", "PLAIN", "CLEAR"],
)  # fmt: skip
def test_dovecot_hashes_verify_with_the_right_password_only(scheme: str) -> None:
    stored = doveadm_hash(scheme)
    assert stored.startswith("{")
    assert imported_hashes.check(stored) in (scheme, "PLAIN" if scheme == "CLEAR" else scheme)
    assert passwords.verify_password(PASSWORD, stored)
    assert not passwords.verify_password(PASSWORD + " ", stored)
    assert not passwords.verify_password(PASSWORD[:-1], stored)
    assert not passwords.verify_password("", stored)
    assert passwords.needs_rehash(stored)


def test_crypt_forms_without_a_scheme_prefix_are_recognised() -> None:
    """/etc/shadow-style passwd-files carry bare crypt(3) strings."""
    stored = doveadm_hash("SHA512-CRYPT").removeprefix("{SHA512-CRYPT}")
    assert stored.startswith("$6$")
    assert imported_hashes.check(stored) == "SHA512-CRYPT"
    assert passwords.verify_password(PASSWORD, stored)


def test_hex_encoded_salted_sha() -> None:
    salt = b"\x01\x02\x03\x04"
    raw = hashlib.sha512(PASSWORD.encode() + salt).digest() + salt
    assert passwords.verify_password(PASSWORD, "{SSHA512.HEX}" + raw.hex())
    assert passwords.verify_password(PASSWORD, "{SSHA512.b64}" + base64.b64encode(raw).decode())
    assert not passwords.verify_password(PASSWORD, "{SSHA512.HEX}" + raw.hex()[:-2] + "00")


def test_our_own_hashes_need_no_rehash() -> None:
    stored = passwords.hash_password(PASSWORD, 10)
    assert not passwords.needs_rehash(stored)


@pytest.mark.parametrize(
    ("stored", "why"),
    [
        ("{MD4}abcd", "not supported"),
        ("{CRAM-MD5}abcd", "not supported"),
        ("{SHA512-CRYPT}garbage", "malformed"),
        ("{BLF-CRYPT}$2y$31$" + "a" * 53, "cost 31"),  # 2^31 rounds: a worker thread for days
        ("{SHA512-CRYPT}$6$rounds=999999999$salt$" + "a" * 86, "rounds above"),
        ("{ARGON2ID}$argon2id$v=19$m=4194304,t=3,p=1$c2FsdHNhbHQ$" + "a" * 43, "cost above"),  # 4 GiB
        ("{ARGON2I}$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$" + "a" * 43, "holds an argon2id"),
        ("{SSHA512}not base64!", "not valid base64"),
        ("{SSHA512}" + base64.b64encode(b"short").decode(), "wrong length"),
        ("{SHA256}" + base64.b64encode(b"x" * 40).decode(), "wrong length"),
        ("{SSHA512.rot13}abcd", "encoding"),
        ("{PLAIN}" + "x" * 2000, "longer than"),
        ("plaintext-without-scheme", "not a {SCHEME}"),
        ("", "not a {SCHEME}"),
    ],
)
def test_hostile_or_broken_hashes_are_refused_and_never_match(stored: str, why: str) -> None:
    with pytest.raises(imported_hashes.UnsupportedHash, match=why.replace("{", r"\{").replace("}", r"\}")):
        imported_hashes.check(stored)
    assert not passwords.verify_password("x" * 2000, stored)
    assert not passwords.verify_password("", stored)
