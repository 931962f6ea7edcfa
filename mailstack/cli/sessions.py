"""`mailstack who` and `mailstack kick`: the logged-in IMAP and POP3 sessions, as the frontends
report them every session_report_seconds, and closing an account's sessions."""

from __future__ import annotations

import argparse
import datetime
from collections import Counter

from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from .output import Output, format_table

CALL_TIMEOUT = 30.0


def cmd_who(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    """One line per account and protocol with its session count and client addresses (doveadm who),
    or every session with --sessions."""
    reply = admin.ListSessions(pb.ListSessionsRequest(account=args.account or ""), timeout=CALL_TIMEOUT)
    sessions = [
        {
            "account": s.account,
            "protocol": s.protocol,
            "remote_ip": s.remote_ip,
            "tls": s.tls,
            "started": datetime.datetime.fromtimestamp(s.started, datetime.UTC).isoformat(timespec="seconds"),
            "frontend": s.frontend,
        }
        for s in reply.sessions
    ]
    if args.sessions:
        rows = [[s["account"], s["protocol"], s["remote_ip"], "yes" if s["tls"] else "no", s["started"], s["frontend"]]
                for s in sessions]  # fmt: skip
        out.emit(sessions, format_table(["ACCOUNT", "PROTOCOL", "CLIENT", "TLS", "SINCE", "FRONTEND"], rows))
        return
    counts = Counter((s.account, s.protocol) for s in reply.sessions)
    clients: dict[tuple[str, str], set[str]] = {}
    for s in reply.sessions:
        clients.setdefault((s.account, s.protocol), set()).add(s.remote_ip)
    rows = [[account, protocol, str(n), " ".join(sorted(clients[(account, protocol)]))]
            for (account, protocol), n in sorted(counts.items())]  # fmt: skip
    out.emit(sessions, format_table(["ACCOUNT", "PROTOCOL", "SESSIONS", "CLIENTS"], rows))


def cmd_kick(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    """Order the account's sessions closed; each frontend closes them at its next report."""
    request = pb.KickSessionsRequest(account=args.account, protocol=args.protocol or "")
    reply = admin.KickSessions(request, timeout=CALL_TIMEOUT)
    what = f"{args.protocol} " if args.protocol else ""
    out.done(
        {"account": args.account, "protocol": args.protocol or "", "sessions": reply.sessions},
        f"kicked {args.account}: {reply.sessions} {what}session(s) close within the report interval",
    )
