"""Password hashes brought over from Dovecot and other servers, verified as they are (ADR 0037).

Dovecot writes a hash as `{SCHEME}data`; crypt(3) forms (`$6$...`, `$2y$...`, `$argon2id$...`) may
also appear without the prefix. Verification goes through libpass (the maintained passlib); the
salted SHA forms are two lines of hashlib. A successful login re-hashes to our scheme, so these
live only until each user's first login after the move.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import warnings

from passlib import exc as passlib_exc
from passlib.hash import argon2, bcrypt, md5_crypt, sha256_crypt, sha512_crypt
from passlib.ifc import PasswordHash

# Upper bounds on the work a stored hash may ask for: an imported hash is data, and a bcrypt cost of
# 31 or an argon2 memory of 4 GiB would let one login stall a worker thread or exhaust memory.
MAX_SHA_CRYPT_ROUNDS = 1_000_000
MAX_BCRYPT_COST = 16
MAX_ARGON2_MEMORY_KIB = 256 * 1024
MAX_ARGON2_TIME = 16
MAX_HASH_LENGTH = 1024

_CRYPT: dict[str, type[PasswordHash]] = {
    "SHA512-CRYPT": sha512_crypt,
    "SHA256-CRYPT": sha256_crypt,
    "MD5-CRYPT": md5_crypt,
    "BLF-CRYPT": bcrypt,
    "ARGON2I": argon2,
    "ARGON2ID": argon2,
}
# crypt(3) prefixes of the same hashes when they come without a {SCHEME}.
_CRYPT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("$6$", "SHA512-CRYPT"),
    ("$5$", "SHA256-CRYPT"),
    ("$1$", "MD5-CRYPT"),
    ("$2y$", "BLF-CRYPT"),
    ("$2b$", "BLF-CRYPT"),
    ("$2a$", "BLF-CRYPT"),
    ("$argon2id$", "ARGON2ID"),
    ("$argon2i$", "ARGON2I"),
)
# {SSHA512} = base64(sha512(password + salt) + salt); unsalted forms have no salt.
_DIGESTS: dict[str, tuple[str, bool]] = {
    "SSHA512": ("sha512", True),
    "SSHA256": ("sha256", True),
    "SSHA": ("sha1", True),
    "SHA512": ("sha512", False),
    "SHA256": ("sha256", False),
    "SHA": ("sha1", False),
    "SHA1": ("sha1", False),
}
_PLAIN = ("PLAIN", "CLEAR", "CLEARTEXT")
_SCHEME = re.compile(r"\{([A-Z0-9-]+)(?:\.([A-Z0-9]+))?\}(.*)", re.DOTALL | re.IGNORECASE)

SCHEMES: tuple[str, ...] = (*_CRYPT, *_DIGESTS, *_PLAIN)


class UnsupportedHash(ValueError):
    """The hash's scheme is not one we verify, or it asks for more work than we allow."""


def split_scheme(stored: str) -> tuple[str, str, str]:
    """('SHA512-CRYPT', '', '$6$...') from '{SHA512-CRYPT}$6$...' or from a bare '$6$...'.

    The middle part is Dovecot's encoding suffix (`{SSHA512.HEX}`; default base64)."""
    match = _SCHEME.fullmatch(stored)
    if match:
        return match.group(1).upper(), (match.group(2) or "").lower(), match.group(3)
    for prefix, scheme in _CRYPT_PREFIXES:
        if stored.startswith(prefix):
            return scheme, "", stored
    raise UnsupportedHash("not a {SCHEME} or crypt(3) hash")


def check(stored: str) -> str:
    """The scheme of an importable hash; UnsupportedHash when it cannot be verified here."""
    if len(stored) > MAX_HASH_LENGTH:
        raise UnsupportedHash(f"hash longer than {MAX_HASH_LENGTH} characters")
    scheme, encoding, data = split_scheme(stored)
    if scheme in _PLAIN:
        return scheme
    if scheme in _DIGESTS:
        _digest_parts(scheme, encoding, data)
        return scheme
    handler = _CRYPT.get(scheme)
    if handler is None:
        raise UnsupportedHash(f"scheme {{{scheme}}} is not supported (supported: {', '.join(SCHEMES)})")
    _check_cost(scheme, handler, data)
    return scheme


def verify(password: str, stored: str) -> bool:
    """Constant-time where the scheme allows; a malformed or unsupported hash never matches."""
    try:
        scheme = check(stored)
        _, encoding, data = split_scheme(stored)
        if scheme in _PLAIN:
            return hmac.compare_digest(password.encode(), data.encode())
        if scheme in _DIGESTS:
            algorithm, salt, expected = _digest_parts(scheme, encoding, data)
            return hmac.compare_digest(hashlib.new(algorithm, password.encode() + salt).digest(), expected)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", passlib_exc.PasslibHashWarning)  # bcrypt padding bits: harmless
            return bool(_CRYPT[scheme].verify(password, data))
    except (UnsupportedHash, ValueError, TypeError, passlib_exc.MissingBackendError):
        return False


def _digest_parts(scheme: str, encoding: str, data: str) -> tuple[str, bytes, bytes]:
    algorithm, salted = _DIGESTS[scheme]
    size = hashlib.new(algorithm).digest_size
    if encoding not in ("", "b64", "base64", "hex"):
        raise UnsupportedHash(f"{{{scheme}}} encoding .{encoding} is not supported (b64, hex)")
    try:
        raw = bytes.fromhex(data) if encoding == "hex" else base64.b64decode(data, validate=True)
    except ValueError:
        raise UnsupportedHash(f"{{{scheme}}} data is not valid {encoding or 'base64'}") from None
    if len(raw) < size + (1 if salted else 0) or (not salted and len(raw) != size):
        raise UnsupportedHash(f"{{{scheme}}} data has the wrong length")
    return algorithm, raw[size:], raw[:size]


def _check_cost(scheme: str, handler: type[PasswordHash], data: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", passlib_exc.PasslibHashWarning)
            parsed = handler.from_string(data)
    except (ValueError, TypeError, passlib_exc.MissingBackendError) as e:
        raise UnsupportedHash(f"{{{scheme}}} hash is malformed: {e}") from None
    if scheme in ("ARGON2I", "ARGON2ID"):
        if parsed.type != scheme[len("ARGON2") :].lower():
            raise UnsupportedHash(f"{{{scheme}}} holds an argon2{parsed.type} hash")
        if parsed.memory_cost > MAX_ARGON2_MEMORY_KIB or parsed.rounds > MAX_ARGON2_TIME:
            raise UnsupportedHash(f"{{{scheme}}} cost above m={MAX_ARGON2_MEMORY_KIB},t={MAX_ARGON2_TIME}")
    elif scheme == "BLF-CRYPT":
        if parsed.rounds > MAX_BCRYPT_COST:
            raise UnsupportedHash(f"{{BLF-CRYPT}} cost {parsed.rounds} above {MAX_BCRYPT_COST}")
    elif getattr(parsed, "rounds", 0) > MAX_SHA_CRYPT_ROUNDS:
        raise UnsupportedHash(f"{{{scheme}}} rounds above {MAX_SHA_CRYPT_ROUNDS}")
