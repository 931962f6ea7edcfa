"""Password hashing with scrypt (see docs/adr/0002-password-hashing.md for the cost)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from mailstack.services.mailstore import imported_hashes

# scrypt cost: N=2**14, r=8, p=1 -> 16 MiB of memory and ~40 ms per hash here. New hashes may use
# another log2(N) (setting password_scrypt_log_n); stored hashes keep the cost they were made with.
LOG_N = 14
MIN_LOG_N = 10  # ~2.5 ms: comparable to SHA512-CRYPT's 5000 rounds, the floor we accept
R = 8
P = 1
SALT_BYTES = 16
KEY_BYTES = 32
PREFIX = "$scrypt$"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2 + 1024 * 1024, dklen=KEY_BYTES
    )


def hash_password(password: str, log_n: int = LOG_N) -> str:
    """'$scrypt$ln=14,r=8,p=1$<salt>$<key>': parameters are stored so they can change later."""
    if not MIN_LOG_N <= log_n <= 20:
        raise ValueError(f"scrypt log2(N) must be {MIN_LOG_N}..20, not {log_n}")
    salt = os.urandom(SALT_BYTES)
    key = _derive(password, salt, log_n, R, P)
    return f"{PREFIX}ln={log_n},r={R},p={P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison; a malformed stored hash never matches. Hashes imported from other
    servers (`{SHA512-CRYPT}...`) are verified as they are (ADR 0037)."""
    if not stored.startswith(PREFIX):
        return imported_hashes.verify(password, stored)
    try:
        params, salt_text, key_text = stored[len(PREFIX) :].split("$")
        fields = dict(item.split("=", 1) for item in params.split(","))
        log_n, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
        if not (1 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        expected = _unb64(key_text)
        actual = _derive(password, _unb64(salt_text), log_n, r, p)
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(actual, expected)


def needs_rehash(stored: str) -> bool:
    """An imported hash is replaced by ours at the first successful login (ADR 0037)."""
    return not stored.startswith(PREFIX)


_dummies: dict[int, str] = {}


def dummy_hash(log_n: int = LOG_N) -> str:
    """Verifying against this when the user does not exist costs the same time as for an account
    hashed at this cost, so the answer does not reveal whether an account exists."""
    if log_n not in _dummies:
        _dummies[log_n] = hash_password(os.urandom(16).hex(), log_n)
    return _dummies[log_n]
