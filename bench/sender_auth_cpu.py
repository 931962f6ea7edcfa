#!/usr/bin/env python3
"""CPU of the inbound sender checks per message, in process: SenderAuth.check (SPF on MAIL FROM
and HELO, DKIM, ARC, DMARC, the Authentication-Results field) on the DKIM-signed message of
`bench/smtp_ingest.py --auth-checks`, the records on a local DNS server (its answers kept while
their TTL runs, as for a sender that sends more than once). Process CPU time (time.process_time),
best of --rounds rounds of --runs checks; the DNS server's threads count in it too (a cached
answer asks nothing). `--unsigned` checks the same message without its signature.

Not a test: it asserts only that the verdict is the expected pass. The end-to-end cost, next to
Postfix->Dovecot, is `bench/smtp_ingest.py --signed` against `--auth-checks`.

    .venv/bin/python bench/sender_auth_cpu.py [--runs 1000] [--rounds 3] [--unsigned]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.services.smtp.checks.dmarc import organizational_domain
from mailstack.services.smtp.checks.dns import Resolver
from mailstack.services.smtp.checks.sender_auth import Policy, SenderAuth

from bench.smtp_ingest import AUTH_DOMAIN, auth_setup


async def checks(auth: SenderAuth, content: bytes, runs: int) -> bytes:
    header = b""
    for _ in range(runs):
        verdict = await auth.check("127.0.0.1", f"mail.{AUTH_DOMAIN}", f"load@{AUTH_DOMAIN}", content)
        header = verdict.header
    return header


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=4096, help="the message size, as smtp_ingest's --size")
    parser.add_argument("--unsigned", action="store_true", help="the message without its DKIM-Signature")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        dns, env = auth_setup(Path(work), args.size)
        try:
            signed = (Path(work) / "signed.eml").read_bytes().replace(b"\n", b"\r\n")
            content = signed[signed.index(b"From: ") :] if args.unsigned else signed
            organizational_domain("mail.example.com")  # the PSL is parsed once per process, not here
            resolver = Resolver(env["MAILSTACK_DNS_SERVERS"], 2.0)
            auth = SenderAuth(resolver, Policy(env["MAILSTACK_AUTHSERV_ID"], True, "Junk", 5.0))
            header = asyncio.run(checks(auth, content, 10))  # warm: DNS answers kept, keys parsed
            expected = b"dkim=none" if args.unsigned else b"dkim=pass"
            if b"spf=pass" not in header or expected not in header or b"dmarc=" not in header:
                raise SystemExit(f"unexpected verdict:\n{header.decode()}")
            best = float("inf")
            for _ in range(args.rounds):
                start = time.process_time()
                asyncio.run(checks(auth, content, args.runs))
                best = min(best, (time.process_time() - start) / args.runs)
        finally:
            dns.stop()  # type: ignore[attr-defined]
    kind = "unsigned" if args.unsigned else "DKIM-signed"
    print(f"sender checks, {kind} {len(content)}-octet message: {best * 1000:.3f} ms CPU per message "
          f"(best of {args.rounds} x {args.runs})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
