"""`mailstack fsck [ACCOUNT] [--repair]`: messages without their body, bodies without a message.

Exit codes (as e2fsck's 0 and 1, and the CLI's 3): 0 nothing wrong, 1 problems found (repaired
with --repair: the report says so), 3 mailstore unreachable.
"""

from __future__ import annotations

import argparse
from typing import Any

from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from .output import CommandError, format_table

FSCK_TIMEOUT = 3600.0  # one existence check per message and a listing of every blob


def cmd_fsck(admin: pbg.AdminStub, args: argparse.Namespace, out: Any) -> None:
    request = pb.CheckIntegrityRequest(account=args.account or "", repair=args.repair, min_age_seconds=args.min_age)
    report = admin.CheckIntegrity(request, timeout=FSCK_TIMEOUT)
    broken = [
        {"account": b.account, "mailbox": b.mailbox, "uid": b.uid, "uidvalidity": b.uidvalidity,
         "blob_key": b.blob_key, "size": b.size}
        for b in report.broken
    ]  # fmt: skip
    data = {
        "messages_checked": report.messages_checked,
        "blobs_checked": report.blobs_checked,
        "messages_without_body": broken,
        "bodies_without_message": list(report.orphans),
        "repaired": report.repaired,
    }
    done = "expunged" if report.repaired else "found"
    lines = [f"checked {report.messages_checked} messages and {report.blobs_checked} bodies"]
    if broken:
        lines.append(f"messages without their body ({done}):")
        rows = [[b["account"], b["mailbox"], b["uid"], b["blob_key"]] for b in broken]
        lines.append(format_table(["ACCOUNT", "MAILBOX", "UID", "BODY"], rows))
    if report.orphans:
        lines.append(f"bodies without a message ({'deleted' if report.repaired else 'found'}): {len(report.orphans)}")
        lines += [f"  {key}" for key in report.orphans[:50]]
    if not broken and not report.orphans:
        lines.append("no problems found")
    out.emit(data, "\n".join(lines))
    problems = len(broken) + len(report.orphans)
    if problems:
        hint = "repaired" if report.repaired else "run `mailstack fsck --repair` to repair"
        raise CommandError(f"{problems} problems found; {hint}")
