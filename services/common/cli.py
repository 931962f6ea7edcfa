"""The `mailstack` command: run services, administer accounts, show settings.

Admin commands call the mailstore's Admin gRPC service. Exit codes: 0 done,
1 the mailstore (or the settings) refused with a message, 2 usage errors and an
unreachable mailstore.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
from mailstack.services.common.cli_fsck import add_fsck_parser
from mailstack.services.common.config import Settings, describe, load_settings
from mailstack.services.common.grpc_client import (
    Identity,
    IdentityError,
    admin_identity,
    check_address,
    error_detail,
    error_message,
    open_sync_channel,
)
from mailstack.services.common.maildir import MaildirMessage, read_maildir
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg

EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2
CONNECT_TIMEOUT = 5.0  # seconds to reach the mailstore before saying it is not running
CALL_TIMEOUT = 60.0
IMPORT_TIMEOUT = 300.0  # one message, however big (the mailstore bounds the size)
APPEND_CHUNK = 1024 * 1024
RECOMPUTE_TIMEOUT = 600.0  # recomputing quotas reads every message's metadata

T = TypeVar("T")


class CommandError(Exception):
    """A one-line message for stderr; the command exits 1."""


class Unreachable(Exception):
    pass


# ---------------------------------------------------------------- value parsing and formatting

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from "1048576", "500M", "2G", "1.5GiB" (binary units; 0 = unlimited)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 1048576, 500M, 2G)")
    number, unit = match.groups()
    return int(Decimal(number) * _UNITS[unit.lower()])


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r} (must be >= 0)")
    return value


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _limit(n: int, fmt: Callable[[int], str] = str) -> str:
    return fmt(n) if n else "unlimited"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned two spaces apart; numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def account_dict(a: pb.Account) -> dict[str, Any]:
    return {
        "name": a.name,
        "quota_bytes": a.quota_bytes,
        "quota_messages": a.quota_messages,
        "used_bytes": a.used_bytes,
        "used_messages": a.used_messages,
        "aliases": list(a.aliases),
    }


def accounts_table(accounts: Sequence[pb.Account]) -> str:
    rows = [
        [
            a.name,
            human_size(a.used_bytes),
            _limit(a.quota_bytes, human_size),
            a.used_messages,
            _limit(a.quota_messages),
            ", ".join(a.aliases),
        ]
        for a in accounts
    ]
    return format_table(["ACCOUNT", "USED", "QUOTA", "MESSAGES", "MAX MESSAGES", "ALIASES"], rows)


# ---------------------------------------------------------------- output


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str) -> None:
        print(json.dumps(data, indent=2, ensure_ascii=False) if self.as_json else text)

    def done(self, data: dict[str, Any], text: str) -> None:
        """A command that changed something: its result as JSON, or a short confirmation."""
        self.emit({"ok": True, **data}, text)


# ---------------------------------------------------------------- admin calls


def _call(method: Callable[..., T], request: Any, timeout: float = CALL_TIMEOUT) -> T:
    return method(request, timeout=timeout)


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        password: str = args.password
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            raise CommandError("passwords do not match")
    else:
        raise CommandError("no password given: use --password-stdin (or --password) when not interactive")
    if not password:
        raise CommandError("empty password")
    return password


def cmd_user_add(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    password = _read_password(args)
    account = _call(
        admin.CreateAccount,
        pb.CreateAccountRequest(
            name=args.address, password=password, quota_bytes=args.quota_bytes, quota_messages=args.quota_messages
        ),
    )
    out.done({"account": account_dict(account)}, f"created {account.name}")


def cmd_user_passwd(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    password = _read_password(args)
    _call(admin.SetPassword, pb.SetPasswordRequest(name=args.address, password=password))
    out.done({"account": args.address}, f"password changed for {args.address}")


def cmd_user_delete(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    _call(admin.DeleteAccount, pb.DeleteAccountRequest(name=args.address))
    out.done({"account": args.address}, f"deleted {args.address}")


def cmd_user_list(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    accounts = _call(admin.ListAccounts, pb.ListAccountsRequest()).accounts
    out.emit([account_dict(a) for a in accounts], accounts_table(accounts))


def cmd_user_show(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    account = _call(admin.GetAccount, pb.GetAccountRequest(name=args.address))
    out.emit(account_dict(account), accounts_table([account]))


def cmd_user_quota(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    if args.bytes is None and args.messages is None:
        raise CommandError("give --bytes and/or --messages (0 = unlimited)")
    limit_bytes, limit_messages = args.bytes, args.messages
    if limit_bytes is None or limit_messages is None:  # keep the limit not given
        current = _call(admin.GetAccount, pb.GetAccountRequest(name=args.address))
        limit_bytes = current.quota_bytes if limit_bytes is None else limit_bytes
        limit_messages = current.quota_messages if limit_messages is None else limit_messages
    account = _call(
        admin.SetQuota, pb.SetQuotaRequest(name=args.address, quota_bytes=limit_bytes, quota_messages=limit_messages)
    )
    out.done(
        {"account": account_dict(account)},
        f"quota of {account.name}: {_limit(account.quota_bytes, human_size)}, "
        f"{_limit(account.quota_messages)} messages",
    )


def cmd_alias_add(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    alias = _call(admin.AddAlias, pb.AddAliasRequest(address=args.address, account=args.account))
    out.done({"alias": {"address": alias.address, "account": alias.account}}, f"{alias.address} -> {alias.account}")


def cmd_alias_delete(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    _call(admin.DeleteAlias, pb.DeleteAliasRequest(address=args.address))
    out.done({"alias": args.address}, f"deleted alias {args.address}")


def cmd_alias_list(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    aliases = _call(admin.ListAliases, pb.ListAliasesRequest(account=args.account or "")).aliases
    out.emit(
        [{"address": a.address, "account": a.account} for a in aliases],
        format_table(["ALIAS", "ACCOUNT"], [[a.address, a.account] for a in aliases]),
    )


def cmd_domain_add(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    domain = _call(admin.AddDomain, pb.AddDomainRequest(name=args.name))
    out.done({"domain": domain.name}, f"added domain {domain.name}")


def cmd_domain_delete(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    _call(admin.DeleteDomain, pb.DeleteDomainRequest(name=args.name))
    out.done({"domain": args.name}, f"deleted domain {args.name}")


def cmd_domain_list(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    domains = _call(admin.ListDomains, pb.ListDomainsRequest()).domains
    out.emit([d.name for d in domains], format_table(["DOMAIN"], [[d.name] for d in domains]))


def cmd_quota_recompute(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    request = pb.RecomputeQuotaRequest(account=args.account or "")
    accounts = _call(admin.RecomputeQuota, request, timeout=RECOMPUTE_TIMEOUT).accounts
    out.emit([account_dict(a) for a in accounts], accounts_table(accounts))


def cmd_import_maildir(store: pbg.MailstoreStub, args: argparse.Namespace, out: Output) -> None:
    """Append every message of a Maildir++ tree to an account, folder by folder, with its flags and
    date. UIDs are new: clients download the imported mailboxes again."""
    try:
        folders = read_maildir(Path(args.path))
    except OSError as err:
        raise CommandError(str(err)) from None
    account = args.account
    report: list[dict[str, Any]] = []
    for folder in folders:
        if folder.mailbox != "INBOX":
            try:
                _call(store.CreateMailbox, pb.CreateMailboxRequest(account=account, name=folder.mailbox))
            except grpc.RpcError as err:
                detail = error_detail(err)
                if detail is None or detail.reason != pb.ALREADY_EXISTS:  # Sent, Drafts, ...
                    raise
        imported = 0
        failed: list[str] = []
        if folder.messages and not args.append:
            # A second run (after a failed one, say) must not double every message: a mailbox
            # that holds mail already is left alone unless --append says otherwise.
            status = _call(store.GetMailboxStatus, pb.MailboxStatusRequest(account=account, name=folder.mailbox))
            if status.messages:
                report.append({"mailbox": folder.mailbox, "imported": 0, "failed": [], "skipped": status.messages})
                continue
        for message in folder.messages:
            try:
                _call(store.Append, iter(_append_requests(account, folder.mailbox, message)), timeout=IMPORT_TIMEOUT)
                imported += 1
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE and error_detail(err) is None:
                    raise
                failed.append(f"{message.path.name}: {error_message(err)}")
        report.append({"mailbox": folder.mailbox, "imported": imported, "failed": failed, "skipped": 0})
    rows = [[r["mailbox"], str(r["imported"]), str(len(r["failed"]))] for r in report]
    problems = "".join(f"\n  {r['mailbox']}: {f}" for r in report for f in r["failed"])
    skipped = "".join(
        f"\n  {r['mailbox']}: not empty ({r['skipped']} messages), skipped; --append imports into it anyway"
        for r in report
        if r["skipped"]
    )
    out.emit(report, format_table(["MAILBOX", "IMPORTED", "FAILED"], rows) + problems + skipped)


cmd_import_maildir.stub = pbg.MailstoreStub  # type: ignore[attr-defined]


def _append_requests(account: str, mailbox: str, message: MaildirMessage) -> Iterator[pb.AppendRequest]:
    data = message.path.read_bytes()
    header = pb.AppendHeader(account=account, mailbox=mailbox, flags=message.flags, size=len(data))
    header.internal_date.unix_seconds = message.mtime
    yield pb.AppendRequest(header=header)
    for start in range(0, len(data), APPEND_CHUNK):
        yield pb.AppendRequest(chunk=data[start : start + APPEND_CHUNK])


def cmd_token_create(admin: spbg.SendAdminStub, args: argparse.Namespace, out: Output) -> None:
    request = spb.CreateTokenRequest(name=args.name, from_domains=args.from_domain, from_addresses=args.from_address)
    reply = _call(admin.CreateToken, request)
    scope = ", ".join([*reply.token.from_domains, *reply.token.from_addresses])
    out.done(
        {"name": reply.token.name, "token": reply.secret},
        f"token {reply.token.name} (may send from {scope}); shown once, keep it secret:\n{reply.secret}",
    )


def cmd_token_list(admin: spbg.SendAdminStub, args: argparse.Namespace, out: Output) -> None:
    tokens = _call(admin.ListTokens, spb.ListTokensRequest()).tokens
    rows = [[t.name, " ".join(t.from_domains), " ".join(t.from_addresses)] for t in tokens]
    data = [{"name": t.name, "from_domains": list(t.from_domains), "from_addresses": list(t.from_addresses)}
            for t in tokens]  # fmt: skip
    out.emit(data, format_table(["TOKEN", "FROM DOMAINS", "FROM ADDRESSES"], rows))


def cmd_token_revoke(admin: spbg.SendAdminStub, args: argparse.Namespace, out: Output) -> None:
    _call(admin.RevokeToken, spb.RevokeTokenRequest(name=args.name))
    out.done({"name": args.name}, f"revoked token {args.name}")


for _command in (cmd_token_create, cmd_token_list, cmd_token_revoke):
    _command.stub = spbg.SendAdminStub  # type: ignore[attr-defined]


def cmd_dkim_keygen(settings: Settings, args: argparse.Namespace) -> int:
    """Write a new DKIM key and print the DNS record to publish (RFC 6376 §3.6.1)."""
    from pathlib import Path

    from mailstack.message.dkim_sign import dns_record, generate_key

    domain = args.domain.lower()
    path = Path(args.out or Path(settings.data_dir) / "dkim" / f"{domain}.{args.selector}.pem")
    if path.exists():
        print(f"mailstack: {path} exists; not overwritten", file=sys.stderr)
        return EXIT_ERROR
    pem, public = generate_key(args.bits)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    record = dns_record(domain, args.selector, public)
    if args.json:
        print(json.dumps({"key": str(path), "record": record, "setting": f"{domain}={args.selector}:{path}"}))
    else:
        print(f"private key: {path}\npublish in DNS:\n{record}")
        print(f"then set MAILSTACK_DKIM_KEYS={domain}={args.selector}:{path}")
    return EXIT_OK


def _connected(channel: grpc.Channel, timeout: float) -> bool:
    """Connect, and tell at once when the connection is refused (instead of retrying until timeout)."""
    reached: list[grpc.ChannelConnectivity] = []
    event = threading.Event()

    def on_state(state: grpc.ChannelConnectivity) -> None:
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            reached.append(state)
            event.set()

    channel.subscribe(on_state, try_to_connect=True)
    try:
        event.wait(timeout)
    finally:
        channel.unsubscribe(on_state)
    return bool(reached) and reached[0] == grpc.ChannelConnectivity.READY


def run_admin(
    address: str,
    command: Callable[[pbg.AdminStub, argparse.Namespace, Output], None],
    args: Any,
    identity: Identity,
) -> None:
    channel = open_sync_channel(address, identity)
    try:
        if not _connected(channel, CONNECT_TIMEOUT):
            raise Unreachable
        try:
            stub_class = getattr(command, "stub", pbg.AdminStub)  # token commands use SendAdmin
            command(stub_class(channel), args, Output(args.json))
        except grpc.RpcError as err:
            # UNAVAILABLE without the mailstore's own ErrorDetail is the transport failing.
            if err.code() == grpc.StatusCode.UNAVAILABLE and error_detail(err) is None:
                raise Unreachable from None
            raise CommandError(error_message(err)) from None
    finally:
        channel.close()


# ---------------------------------------------------------------- local commands


def cmd_ca_init(settings: Settings, args: argparse.Namespace) -> int:
    """The internal gRPC API's CA (ADR 0009): ca.crt and ca.key (0600) in a folder, unless there."""
    import fcntl

    from mailstack.services.common import internal_ca

    folder = Path(args.dir) if args.dir else internal_ca.data_folder(settings.data_dir)
    existed = (folder / "ca.crt").exists()
    internal_ca.private_folder(folder)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        internal_ca.ensure_ca(folder)
    print(f"CA {'kept' if existed else 'created'}: {folder / 'ca.crt'} (keep {folder / 'ca.key'} secret)")
    return EXIT_OK


def cmd_ca_issue(settings: Settings, args: argparse.Namespace) -> int:
    """An identity for a deployment: OUT/tls.crt, tls.key and ca.crt (a kubernetes.io/tls Secret's keys)."""
    from mailstack.services.common import internal_ca

    folder = Path(args.ca) if args.ca else internal_ca.data_folder(settings.data_dir)
    if not (folder / "ca.key").exists():
        raise CommandError(f"no CA in {folder}: run `mailstack ca init` first (or give --ca DIR)")
    try:
        written = internal_ca.issue_to_folder(folder, internal_ca.check_name(args.name), Path(args.out))
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from None
    out = Path(args.out)
    if not written:
        print(f"{out / 'tls.crt'} exists; kept")
    else:
        print(f"identity {args.name.lower()}: {out / 'tls.crt'}, {out / 'tls.key'}, {out / 'ca.crt'}")
    return EXIT_OK


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    rows = describe(settings)
    if args.json:
        print(json.dumps([{"name": n, "value": v, "help": h} for n, v, h in rows], indent=2))
    else:
        print(format_table(["SETTING", "VALUE", "DESCRIPTION"], rows))
    return EXIT_OK


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from mailstack.services.common.allocator import tune_allocator
    from mailstack.services.common.lifecycle import ServeError, run_services
    from mailstack.services.common.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    tune_allocator()
    try:
        asyncio.run(run_services(settings, args.services))
    except (ServeError, IdentityError) as err:  # IdentityError: a gRPC identity file missing or unreadable
        raise CommandError(str(err)) from None
    return EXIT_OK


# ---------------------------------------------------------------- argument parsing


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the command (`mailstack --json user list`, `mailstack user list --json`);
    # below the top level the defaults are suppressed so they do not overwrite a value given earlier.
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of tables")
    group.add_argument(
        "--config", metavar="FILE", default=default(None), help="TOML settings file (else MAILSTACK_CONFIG)"
    )
    group.add_argument(
        "--mailstore",
        metavar="ADDR",
        default=default(None),
        help="mailstore gRPC address, HOST:PORT or unix:/PATH (else MAILSTACK_MAILSTORE_ADDR)",
    )


def _password_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password", metavar="P", help="the password (visible to other local users; prefer stdin)")
    group.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")


def build_parser() -> argparse.ArgumentParser:
    from mailstack.services.common.lifecycle import SERVICES

    parser = argparse.ArgumentParser(
        prog="mailstack", description="mailstack: SMTP, IMAP and POP3 over a gRPC mailstore."
    )
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, top=False)

    def add(sub: Any, name: str, help: str, handler: Any = None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, parents=[common])
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    serve = add(commands, "serve", "run services (all available ones in one process when none are named)")
    serve.add_argument("services", nargs="*", metavar="SERVICE", help=f"one or more of: {', '.join(SERVICES)}")
    serve.set_defaults(local=cmd_serve)
    add(commands, "config", "print the effective settings (secrets masked)").set_defaults(local=cmd_config)

    user = commands.add_parser("user", help="accounts").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(user, "add", "create an account (its domain is served from then on)", cmd_user_add)
    p.add_argument("address")
    _password_options(p)
    p.add_argument("--quota-bytes", type=parse_size, default=0, metavar="N", help="e.g. 500M, 2G (0 = unlimited)")
    p.add_argument("--quota-messages", type=parse_count, default=0, metavar="N", help="0 = unlimited")
    p = add(user, "passwd", "set an account's password", cmd_user_passwd)
    p.add_argument("address")
    _password_options(p)
    add(user, "delete", "delete an account and all its mail", cmd_user_delete).add_argument("address")
    add(user, "list", "list accounts with usage and quota", cmd_user_list)
    add(user, "show", "show one account", cmd_user_show).add_argument("address")
    p = add(user, "quota", "set an account's quota (a limit not given is kept)", cmd_user_quota)
    p.add_argument("address")
    p.add_argument("--bytes", type=parse_size, metavar="N", help="e.g. 500M, 2G (0 = unlimited)")
    p.add_argument("--messages", type=parse_count, metavar="N", help="0 = unlimited")

    alias = commands.add_parser("alias", help="aliases").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(alias, "add", 'deliver ADDRESS to ACCOUNT ("@domain" catches all of a domain)', cmd_alias_add)
    p.add_argument("address")
    p.add_argument("account")
    add(alias, "delete", "delete an alias", cmd_alias_delete).add_argument("address")
    add(alias, "list", "list aliases (of one account)", cmd_alias_list).add_argument("account", nargs="?")

    domain = commands.add_parser("domain", help="served domains")
    domains = domain.add_subparsers(dest="action", metavar="ACTION", required=True)
    add(domains, "add", "serve a domain", cmd_domain_add).add_argument("name")
    add(domains, "delete", "stop serving a domain", cmd_domain_delete).add_argument("name")
    add(domains, "list", "list served domains", cmd_domain_list)

    token = commands.add_parser("token", help="API tokens of the Send API")
    tokens = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(tokens, "create", "create a token (printed once) for a service that sends mail", cmd_token_create)
    p.add_argument("--name", required=True)
    p.add_argument("--from-domain", action="append", default=[], metavar="DOMAIN", help="may send from DOMAIN")
    p.add_argument("--from-address", action="append", default=[], metavar="ADDRESS", help="may send as ADDRESS")
    add(tokens, "list", "list tokens (never their secrets)", cmd_token_list)
    add(tokens, "revoke", "revoke a token at once", cmd_token_revoke).add_argument("name")

    ca = commands.add_parser("ca", help="identities of the internal gRPC API (mTLS, ADR 0009)")
    cas = ca.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(cas, "init", "create the internal CA (default in DATA_DIR/grpc, as `serve` does on first start)")
    p.add_argument("--dir", help="folder for ca.crt and ca.key (default DATA_DIR/grpc)")
    p.set_defaults(local=cmd_ca_init)
    p = add(cas, "issue", "issue an identity: OUT/tls.crt, tls.key, ca.crt (names cert-manager uses)")
    p.add_argument("name", help="smtp, imap, pop3, outbound, admin, or mailstore (the server)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (a Secret's files)")
    p.add_argument("--ca", metavar="DIR", help="the CA's folder (default DATA_DIR/grpc)")
    p.set_defaults(local=cmd_ca_issue)

    dkim = commands.add_parser("dkim", help="DKIM signing keys")
    dkims = dkim.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(dkims, "keygen", "write a new signing key and print the DNS TXT record to publish")
    p.add_argument("domain")
    p.add_argument("--selector", default="mailstack")
    p.add_argument("--bits", type=int, default=2048)
    p.add_argument("--out", help="key file (default DATA_DIR/dkim/DOMAIN.SELECTOR.pem)")
    p.set_defaults(local=cmd_dkim_keygen)

    imports = commands.add_parser("import", help="import mail from another server's storage")
    importers = imports.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(importers, "maildir", "append a Maildir++ tree (Dovecot, Courier) to an account", cmd_import_maildir)
    p.add_argument("path", help="the Maildir: the folder holding cur/, new/ and the .Folder ones")
    p.add_argument("account")
    p.add_argument("--append", action="store_true", help="also into mailboxes that hold mail already")

    quota = commands.add_parser("quota", help="quota accounting")
    quotas = quota.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(quotas, "recompute", "recount usage from the stored messages (counters drift)", cmd_quota_recompute)
    p.add_argument("account", nargs="?", help="one account (default: all)")

    add_fsck_parser(add, commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(config_file=args.config)
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError
        print(f"mailstack: settings: {err}", file=sys.stderr)
        return EXIT_ERROR
    address = args.mailstore or settings.mailstore_addr
    try:
        if hasattr(args, "local"):
            return int(args.local(settings, args))
        try:
            check_address(address)
        except ValueError as err:
            print(f"mailstack: {err}", file=sys.stderr)
            return EXIT_UNREACHABLE
        try:
            identity = admin_identity(settings)
        except IdentityError as err:
            raise CommandError(str(err)) from None
        run_admin(address, args.handler, args, identity)
        return EXIT_OK
    except CommandError as err:
        print(f"mailstack: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Unreachable:
        print(
            f"mailstack: mailstore not reachable at {address} (is `mailstack serve` running?"
            " is the admin identity from its CA? see `mailstack ca`)",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mailstack user list | head`: stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
