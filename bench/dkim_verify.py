#!/usr/bin/env python3
"""CPU per DKIM verification of one signed 10 KB message: dkimpy (what verify_dkim called before
ADR 0040) against our message.dkim_verify, both from the raw message bytes to the verdict, the key
record in hand (no DNS). Process CPU time (time.process_time), best of --rounds rounds of --runs
verifications each; one core, nothing else started.

Not a test: it asserts only that every verification passes. ed25519 rows need pynacl (a test
dependency: dkimpy signs ed25519 with it).

    .venv/bin/python bench/dkim_verify.py [--runs 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import base64
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailstack.message import dkim_verify

_QUIET = logging.getLogger("bench.dkimpy")
_QUIET.setLevel(logging.CRITICAL)
_QUIET.propagate = False

DOMAIN, SELECTOR = b"example.test", b"sel"


def message() -> bytes:
    """About 10 KB: a realistic header and a text body of 160 lines."""
    header = (
        b"From: Alice Example <alice@example.test>\r\nTo: Bob <bob@example.org>\r\nCc: carol@example.org\r\n"
        b"Subject: Quarterly numbers and the plan for next year\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <20261207100000.12345@example.test>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"Received: from mail.example.test (mail.example.test [192.0.2.1])\r\n\tby mx.example.org; Mon, 7 Dec 2026\r\n"
    )
    body = b"".join(b"Line %03d of the report: revenue, costs, margins  and\tforecasts.\r\n" % i for i in range(160))
    return header + b"\r\n" + body


def keys() -> dict[str, tuple[bytes, bytes, bytes]]:
    """name -> (private key as dkimpy takes it, TXT record, a=)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    out = {"rsa-sha256 2048": (pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der), b"rsa-sha256")}
    try:
        import nacl  # noqa: F401  (dkimpy's ed25519 signing needs it)
    except ImportError:
        return out
    edkey = ed25519.Ed25519PrivateKey.generate()
    seed = edkey.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw = edkey.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    out["ed25519-sha256"] = (
        base64.b64encode(seed),
        b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw),
        b"ed25519-sha256",
    )
    return out


def with_dkimpy(content: bytes, record: bytes) -> bool:
    verifier = dkim.DKIM(content, logger=_QUIET, minkey=1024)
    return bool(verifier.verify(0, dnsfunc=lambda name, timeout=5: record))


def with_ours(content: bytes, record: bytes) -> bool:
    parsed = dkim_verify.Message(content)
    [field] = parsed.signature_fields()
    signature = dkim_verify.read_signature(field, dkim_verify.signature_tags(field))
    dkim_verify.verify(parsed, signature, record, time.time())
    return True


def cpu_ms(verify: Callable[[bytes, bytes], bool], content: bytes, record: bytes, runs: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(runs):
            if not verify(content, record):
                raise SystemExit("a verification failed")
        best = min(best, (time.process_time() - start) / runs)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    content = message()
    print(f"message: {len(content)} octets; best of {args.rounds} x {args.runs} verifications, ms CPU each")
    print(f"{'signature':34} {'dkimpy':>8} {'ours':>8} {'ratio':>6}")
    for name, (private, record, algorithm) in keys().items():
        for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple")):
            field = dkim.sign(
                content, SELECTOR, DOMAIN, private, canonicalize=canon, signature_algorithm=algorithm, logger=_QUIET
            )
            signed = bytes(field) + content
            theirs = cpu_ms(with_dkimpy, signed, record, args.runs, args.rounds)
            ours = cpu_ms(with_ours, signed, record, args.runs, args.rounds)
            label = f"{name} {canon[0].decode()}/{canon[1].decode()}"
            print(f"{label:34} {theirs:8.3f} {ours:8.3f} {theirs / ours:5.1f}x")


if __name__ == "__main__":
    main()
