"""The commands that call the mailstore's gRPC API with the admin identity (ADR 0009): accounts,
aliases, domains, quotas, Send API tokens (the imports: importing.py)."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg

from .output import (
    CommandError,
    Interrupted,
    Output,
    UsageError,
    _limit,
    account_dict,
    accounts_table,
    format_table,
    human_size,
)

CALL_TIMEOUT = 60.0
RECOMPUTE_TIMEOUT = 600.0  # recomputing quotas reads every message's metadata

T = TypeVar("T")


def _call(method: Callable[..., T], request: Any, timeout: float = CALL_TIMEOUT) -> T:
    return method(request, timeout=timeout)


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        password: str = args.password
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = _prompt()
    else:
        raise UsageError("no password given: use --password-stdin (or --password) when not interactive")
    if not password:
        raise UsageError("empty password")
    return password


def _prompt() -> str:
    """The password, typed twice. Ctrl-D and Ctrl-C end the command with one line (the prompt's line
    is ended first, so the message does not follow "Password:")."""
    try:
        password = getpass.getpass("Password: ")
        again = getpass.getpass("Password (again): ")
    except EOFError:
        print(file=sys.stderr)
        raise UsageError("no password given (end of input at the prompt); nothing changed") from None
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise Interrupted("interrupted at the password prompt; nothing changed") from None
    if again != password:
        raise UsageError("passwords do not match; nothing changed")
    return password


def cmd_user_add(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    password = "" if args.password_hash else _read_password(args)
    account = _call(
        admin.CreateAccount,
        pb.CreateAccountRequest(
            name=args.address,
            password=password,
            password_hash=args.password_hash or "",
            quota_bytes=args.quota_bytes,
            quota_messages=args.quota_messages,
        ),
    )
    out.done({"account": account_dict(account)}, f"created {account.name}")


def cmd_user_passwd(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    password = "" if args.password_hash else _read_password(args)
    request = pb.SetPasswordRequest(name=args.address, password=password, password_hash=args.password_hash or "")
    _call(admin.SetPassword, request)
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
    """Refused by the mailstore while the domain has accounts or aliases (it says how many); --force
    deletes them too and says how many it deleted."""
    reply = _call(admin.DeleteDomain, pb.DeleteDomainRequest(name=args.name, force=args.force))
    also = ""
    if reply.accounts_deleted or reply.aliases_deleted:
        accounts = f"{reply.accounts_deleted} account{'s' * (reply.accounts_deleted != 1)}"
        aliases = f"{reply.aliases_deleted} alias{'es' * (reply.aliases_deleted != 1)}"
        also = f" with its {accounts} (and their mail) and {aliases}"
    out.done(
        {"domain": args.name, "accounts_deleted": reply.accounts_deleted, "aliases_deleted": reply.aliases_deleted},
        f"deleted domain {args.name}{also}",
    )


def cmd_domain_list(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    domains = _call(admin.ListDomains, pb.ListDomainsRequest()).domains
    out.emit([d.name for d in domains], format_table(["DOMAIN"], [[d.name] for d in domains]))


def cmd_quota_recompute(admin: pbg.AdminStub, args: argparse.Namespace, out: Output) -> None:
    request = pb.RecomputeQuotaRequest(account=args.account or "")
    accounts = _call(admin.RecomputeQuota, request, timeout=RECOMPUTE_TIMEOUT).accounts
    out.emit([account_dict(a) for a in accounts], accounts_table(accounts))


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
