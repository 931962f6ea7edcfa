"""Every `mailstack` command as data: its words, help, arguments, handler, and the gRPC API it
calls (with the admin identity, ADR 0009) or none when it runs in this process. The parser is
built from this table (main.py); adding a command is one entry here and its handler.

Handlers of API commands take (stub, args, Output) and raise CommandError; local ones take
(settings, args) and return the exit code.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailstack.services.common.lifecycle import SERVICES
from mailstack.services.common.maildir_uids import DOVECOT_UIDL_FORMAT
from mailstack.v1 import mailstore_pb2_grpc as pbg
from mailstack.v1 import send_pb2_grpc as spbg

from . import (
    admin,
    backup,
    forwards,
    fsck,
    healthcheck,
    imap_source,
    importing,
    local,
    mail,
    maildir_source,
    migrate,
    passwd_file,
    sessions,
)
from .output import parse_count, parse_size, parse_uidl_format


class Api(enum.Enum):
    """The gRPC service an admin command calls."""

    ADMIN = "mailstack.v1.Admin"
    MAILSTORE = "mailstack.v1.Mailstore"  # import appends like a client would
    SEND_ADMIN = "mailstack.v1.SendAdmin"
    IMPORT = "mailstack.v1.Admin+Mailstore"  # kept UIDs through Admin, the rest as a client would

    def stub(self, channel: Any) -> Any:
        makers: dict[Api, Callable[[Any], Any]] = {
            Api.ADMIN: pbg.AdminStub,
            Api.MAILSTORE: pbg.MailstoreStub,
            Api.SEND_ADMIN: spbg.SendAdminStub,
            Api.IMPORT: importing.import_stubs,
        }
        return makers[self](channel)


@dataclass(frozen=True)
class Arg:
    """One add_argument call."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class OneOf:
    """Mutually exclusive arguments."""

    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]  # ("user", "add")
    help: str
    handler: Callable[..., Any]
    api: Api | None  # None: runs here, without the mailstore
    args: tuple[Arg | OneOf, ...] = ()


# The words before the last: groups of commands and their help.
GROUPS = {
    "user": "accounts",
    "alias": "aliases",
    "forward": "forwarding to outside addresses (SRS, ARC)",
    "domain": "served domains",
    "token": "API tokens of the Send API",
    "ca": "identities of the internal gRPC API (mTLS, ADR 0009)",
    "dkim": "DKIM signing keys",
    "import": "import mail from another server's storage",
    "quota": "quota accounting",
    "mail": "an account's mail by IMAP SEARCH query (doveadm search, fetch, expunge, move)",
    "migrate": "move an installation's data to another backend",
}
QUERY = arg("query", nargs="+", metavar="KEY", help="IMAP SEARCH keys (RFC 9051 §6.4.4): ALL, FROM bob, UID 5:*, ...")
IN_MAILBOX = arg("--mailbox", default="", metavar="NAME", help="only this mailbox (default: all)")

PASSWORD = OneOf(
    (
        arg("--password", metavar="P", help="the password (visible to other local users; prefer stdin)"),
        arg("--password-stdin", action="store_true", help="read the password from the first line of stdin"),
    )
)
# An account's own password may also come as a hash imported from another server (ADR 0037).
ACCOUNT_PASSWORD = OneOf(
    (
        *PASSWORD.args,
        arg(
            "--password-hash",
            metavar="HASH",
            help="a hash from another server, kept until the first login: {SHA512-CRYPT}$6$... (ADR 0037)",
        ),
    )
)
IMPORT_ARGS = (
    arg("--delete", action="store_true", help="expunge what the source no longer has (the final pass)"),
    arg("--pop3-uidl-format", type=parse_uidl_format, default=DOVECOT_UIDL_FORMAT, metavar="FORMAT",
        help="the old server's pop3_uidl_format, for messages without a saved UIDL (default %(default)s, "
             "Dovecot's; %%u UID, %%v UIDVALIDITY, %%f file name, %%g GUID; '' keeps none)"),
)  # fmt: skip
SIZE = {"type": parse_size, "metavar": "N", "help": "e.g. 500M, 2G (0 = unlimited)"}

COMMANDS: tuple[Command, ...] = (
    Command(("serve",), "run services (all available ones in one process when none are named)", local.cmd_serve,
            None, (arg("services", nargs="*", metavar="SERVICE", help=f"one or more of: {', '.join(SERVICES)}"),)),
    Command(("config",), "print the effective settings (secrets masked), where each came from, and check them",
            local.cmd_config, None,
            (arg("--check", action="store_true", help="only check them, as `serve` does first (exit 2 if bad)"),
             arg("--changed", action="store_true", help="only those not at their default (as `postconf -n`)"),
             arg("services", nargs="*", metavar="SERVICE",
                 help="check what these read (as `serve SERVICE...`; default: everything, the CLI's too)"))),
    Command(("healthcheck",), "check that the services `mailstack serve` runs here answer (container health)",
            healthcheck.cmd_healthcheck, None,
            (arg("services", nargs="*", metavar="SERVICE",
                 help=f"one or more of: {', '.join(healthcheck.CHECKS)} (default: what `serve` runs here)"),)),
    Command(("user", "add"), "create an account (its domain is served from then on)", admin.cmd_user_add, Api.ADMIN,
            (arg("address"), ACCOUNT_PASSWORD, arg("--quota-bytes", default=0, **SIZE),
             arg("--quota-messages", type=parse_count, default=0, metavar="N", help="0 = unlimited"))),
    Command(("user", "passwd"), "set an account's password", admin.cmd_user_passwd, Api.ADMIN,
            (arg("address"), ACCOUNT_PASSWORD)),
    Command(("user", "import"), "create accounts from Dovecot's passwd-file, password hashes and quotas kept",
            passwd_file.cmd_user_import_passwd_file, Api.ADMIN,
            (arg("format", choices=["passwd-file"]), arg("file"),
             arg("--domain", help="domain of users listed without one"),
             arg("--update", action="store_true", help="replace hash and quota of accounts that exist"))),
    Command(("user", "delete"), "delete an account and all its mail", admin.cmd_user_delete, Api.ADMIN,
            (arg("address"),)),
    Command(("user", "list"), "list accounts with usage and quota", admin.cmd_user_list, Api.ADMIN),
    Command(("user", "show"), "show one account", admin.cmd_user_show, Api.ADMIN, (arg("address"),)),
    Command(("user", "quota"), "set an account's quota (a limit not given is kept)", admin.cmd_user_quota, Api.ADMIN,
            (arg("address"), arg("--bytes", **SIZE),
             arg("--messages", type=parse_count, metavar="N", help="0 = unlimited"))),
    Command(("alias", "add"), 'deliver ADDRESS to ACCOUNT ("@domain" catches all of a domain)', admin.cmd_alias_add,
            Api.ADMIN, (arg("address"), arg("account"))),
    Command(("alias", "delete"), "delete an alias", admin.cmd_alias_delete, Api.ADMIN, (arg("address"),)),
    Command(("alias", "list"), "list aliases (of one account)", admin.cmd_alias_list, Api.ADMIN,
            (arg("account", nargs="?"),)),
    Command(("forward", "set"), "forward mail for an account or alias to outside addresses", forwards.cmd_forward_set,
            Api.ADMIN, (arg("address"), arg("targets", nargs="+", metavar="target"),
                        arg("--keep-copy", action="store_true", help="also store it for the account"))),
    Command(("forward", "delete"), "stop forwarding an address", forwards.cmd_forward_delete, Api.ADMIN,
            (arg("address"),)),
    Command(("forward", "list"), "list forwards", forwards.cmd_forward_list, Api.ADMIN),
    Command(("domain", "add"), "serve a domain", admin.cmd_domain_add, Api.ADMIN, (arg("name"),)),
    Command(("domain", "delete"), "stop serving a domain (refused while it has accounts or aliases)",
            admin.cmd_domain_delete, Api.ADMIN,
            (arg("name"), arg("--force", action="store_true",
                              help="delete its accounts (with their mail) and aliases too"))),
    Command(("domain", "list"), "list served domains", admin.cmd_domain_list, Api.ADMIN),
    Command(("token", "create"), "create a token (printed once) for a service that sends mail", admin.cmd_token_create,
            Api.SEND_ADMIN,
            (arg("--name", required=True),
             arg("--from-domain", action="append", default=[], metavar="DOMAIN", help="may send from DOMAIN"),
             arg("--from-address", action="append", default=[], metavar="ADDRESS", help="may send as ADDRESS"))),
    Command(("token", "list"), "list tokens (never their secrets)", admin.cmd_token_list, Api.SEND_ADMIN),
    Command(("token", "revoke"), "revoke a token at once", admin.cmd_token_revoke, Api.SEND_ADMIN, (arg("name"),)),
    Command(("ca", "init"), "create the internal CA (default in DATA_DIR/grpc, as `serve` does on first start)",
            local.cmd_ca_init, None, (arg("--dir", help="folder for ca.crt and ca.key (default DATA_DIR/grpc)"),)),
    Command(("ca", "issue"), "issue an identity: OUT/tls.crt, tls.key, ca.crt (names cert-manager uses)",
            local.cmd_ca_issue, None,
            (arg("name", help="smtp, imap, pop3, outbound, admin, or mailstore (the server)"),
             arg("--out", required=True, metavar="DIR", help="folder to write (a Secret's files)"),
             arg("--ca", metavar="DIR", help="the CA's folder (default DATA_DIR/grpc)"))),
    Command(("dkim", "keygen"), "write a new signing key and print the DNS TXT record to publish",
            local.cmd_dkim_keygen, None,
            (arg("domain"), arg("--selector", default="mailstack"), arg("--bits", type=int, default=2048),
             arg("--out", help="key file (default DATA_DIR/dkim/DOMAIN.SELECTOR.pem)"))),
    Command(("import", "maildir"), "bring an account in line with a Maildir++ tree (Dovecot, Courier), "
            "keeping UIDs, UIDVALIDITY and POP3 UIDLs", maildir_source.cmd_import_maildir, Api.IMPORT,
            (arg("path", help="the Maildir: the folder holding cur/, new/ and the .Folder ones"), arg("account"),
             *IMPORT_ARGS,
             arg("--append", action="store_true", help="(for old scripts: every pass imports what is missing)"))),
    Command(("import", "imap"), "bring an account in line with another server's IMAP account (TLS)",
            imap_source.cmd_import_imap, Api.IMPORT,
            (arg("account"), arg("--host", required=True), arg("--port", type=int, default=0,
             help="default 993 (tls) or 143"), arg("--user", required=True, help="the login on the source"),
             PASSWORD, arg("--security", choices=("tls", "starttls", "none"), default="tls"),
             arg("--cafile", help="CA certificates to verify the source with (default: the system's)"),
             arg("--insecure", action="store_true", help="do not verify the source's certificate"),
             arg("--folder", action="append", default=[], metavar="NAME", help="only this folder (repeatable)"),
             *IMPORT_ARGS)),
    Command(("mail", "search"), "list the messages a query matches, with mailbox, UIDVALIDITY and UID",
            mail.cmd_mail_search, Api.MAILSTORE, (arg("account"), IN_MAILBOX, QUERY)),
    Command(("mail", "fetch"), "write one message to stdout, byte for byte", mail.cmd_mail_fetch, Api.MAILSTORE,
            (arg("account"), arg("mailbox"), arg("uid", type=int),
             arg("--header", action="store_true", help="only its header"))),
    Command(("mail", "expunge"), "expunge the messages a query matches (for good)", mail.cmd_mail_expunge,
            Api.MAILSTORE, (arg("account"), IN_MAILBOX, QUERY)),
    Command(("mail", "move"), "move the messages a query matches into DESTINATION", mail.cmd_mail_move,
            Api.MAILSTORE, (arg("account"), arg("destination"), IN_MAILBOX, QUERY)),
    Command(("backup",), "one account to a portable file: Maildir++ in a tar, with UIDs, flags, dates, UIDLs",
            backup.cmd_backup, Api.IMPORT,
            (arg("account"), arg("file", help="the tar to write (gzip when it ends in .gz)"))),
    Command(("restore",), "a backup into an existing account: the same UIDs where its mailboxes are new",
            backup.cmd_restore, Api.IMPORT,
            (arg("file"), arg("account", nargs="?", help="default: the account the backup was made of"))),
    Command(("who",), "logged-in IMAP and POP3 sessions per account (as frontends report them)", sessions.cmd_who,
            Api.ADMIN, (arg("account", nargs="?", help="one account (default: all)"),
                        arg("--sessions", action="store_true", help="one line per session"))),
    Command(("kick",), "close an account's IMAP and POP3 sessions", sessions.cmd_kick, Api.ADMIN,
            (arg("account"), arg("--protocol", choices=["imap", "pop3"], help="only these (default: both)"))),
    Command(("quota", "recompute"), "recount usage from the stored messages (counters drift)",
            admin.cmd_quota_recompute, Api.ADMIN, (arg("account", nargs="?", help="one account (default: all)"),)),
    Command(("fsck",), "check that every message has its body (and every body a message)", fsck.cmd_fsck, Api.ADMIN,
            (arg("account", nargs="?", help="one account (default: all; bodies without a message only then)"),
             arg("--repair", action="store_true", help="expunge messages without a body, delete orphan bodies"),
             arg("--min-age", type=int, default=0, metavar="SECONDS",
                 help="bodies younger than this are deliveries in flight, not orphans "
                      "(default: orphan_min_age_seconds)"))),
    Command(("migrate", "metadata"), "copy SQLite metadata into an empty PostgreSQL database, verified (ADR 0035)",
            migrate.cmd_migrate_metadata, None,
            (arg("--from", dest="source", required=True, metavar="sqlite:///PATH",
                 help="the embedded installation's metadata (stop its mailstore first)"),
             arg("--to", dest="target", required=True, metavar="postgresql://...",
                 help="an empty database (its schema is created); refused if it holds any row"),
             arg("--blob-url", default="", metavar="URL",
                 help="where bodies kept in the SQLite file go (default: the installation's blob store, ADR 0045)"))),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser, args: tuple[Arg | OneOf, ...]) -> None:
    for item in args:
        if isinstance(item, OneOf):
            group = parser.add_mutually_exclusive_group()
            for one in item.args:
                group.add_argument(*one.flags, **one.options)
        else:
            parser.add_argument(*item.flags, **item.options)
