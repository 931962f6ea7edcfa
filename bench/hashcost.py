"""Same password-hash cost on both sides of a login benchmark.

Dovecot (of the reference-peers kit, PEERS_KIT) stores SHA512-CRYPT hashes (glibc crypt, 5000
rounds); mailstack stores scrypt (ADR 0002, log2(N)=14 by default, ~40 ms). Comparing login rates at those two
costs measures the hash, not the server, so the benches time one SHA512-CRYPT verification with
the same glibc routine Dovecot calls and pick the scrypt log2(N) whose verification costs nearest
to it. Production keeps its default; this is for side-by-side runs only.
"""

from __future__ import annotations

import time
import warnings

from mailstack.services.mailstore import passwords

SHA512_CRYPT_SALT = "$6$benchsaltbench$"  # the "$6$" prefix without rounds= means 5000 rounds


def _best_of(fn: object, repeat: int = 5) -> float:
    assert callable(fn)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sha512_crypt_seconds(password: str = "Secret123") -> float | None:
    """One SHA512-CRYPT verification through glibc's crypt(3), or None without the crypt module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
    return _best_of(lambda: crypt.crypt(password, SHA512_CRYPT_SALT))


def scrypt_seconds(log_n: int, password: str = "Secret123") -> float:
    stored = passwords.hash_password(password, log_n)
    return _best_of(lambda: passwords.verify_password(password, stored))


def matching_log_n(password: str = "Secret123") -> tuple[int, str]:
    """The scrypt log2(N) nearest in cost to Dovecot's SHA512-CRYPT, and a line saying so."""
    target = sha512_crypt_seconds(password)
    if target is None:
        return passwords.LOG_N, "hash cost: crypt module missing, scrypt left at its default"
    costs = {n: scrypt_seconds(n, password) for n in range(passwords.MIN_LOG_N, passwords.LOG_N + 1)}
    best = min(costs, key=lambda n: abs(costs[n] - target))
    return best, (
        f"hash cost: SHA512-CRYPT {target * 1000:.2f} ms (Dovecot); scrypt log2(N)={best} "
        f"{costs[best] * 1000:.2f} ms (mailstack; default {passwords.LOG_N}: {costs[passwords.LOG_N] * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    print(matching_log_n()[1])
