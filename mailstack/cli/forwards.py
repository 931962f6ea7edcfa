"""`mailstack forward ...`: forwarding of an account's or alias's mail to outside addresses (issue 18)."""

from __future__ import annotations

import argparse

from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from .admin import CALL_TIMEOUT
from .output import Output, format_table


def _forward_dict(forward: pb.Forward) -> dict[str, object]:
    return {"address": forward.address, "targets": list(forward.targets), "keep_copy": forward.keep_copy}


def cmd_forward_set(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    request = pb.Forward(address=args.address, targets=args.targets, keep_copy=args.keep_copy)
    forward = admin.SetForward(request, timeout=CALL_TIMEOUT)
    copy = " (a copy kept)" if forward.keep_copy else ""
    out.done({"forward": _forward_dict(forward)}, f"{forward.address} -> {', '.join(forward.targets)}{copy}")


def cmd_forward_delete(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    admin.SetForward(pb.Forward(address=args.address), timeout=CALL_TIMEOUT)
    out.done({"forward": args.address}, f"{args.address} is no longer forwarded")


def cmd_forward_list(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    forwards = admin.ListForwards(pb.ListForwardsRequest(), timeout=CALL_TIMEOUT).forwards
    rows = [[f.address, ", ".join(f.targets), "yes" if f.keep_copy else "no"] for f in forwards]
    out.emit([_forward_dict(f) for f in forwards], format_table(["ADDRESS", "FORWARDED TO", "COPY KEPT"], rows))
