"""The `mailstack` command: run services, administer accounts, show settings.

Admin commands call the mailstore's gRPC API with the admin identity. Every error is one line on
stderr (a JSON object with --json) and a documented exit code (output.EXIT_CODES).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc

from mailstack import __version__
from mailstack.services.common.config import Loaded, load
from mailstack.services.common.grpc_client import (
    Identity,
    IdentityError,
    admin_identity,
    check_address,
    error_detail,
    error_message,
    open_sync_channel,
)
from mailstack.v1 import mailstore_pb2 as pb

from .commands import COMMANDS, GROUPS, Command, add_arguments
from .output import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_OK,
    CommandError,
    Interrupted,
    Output,
    Unreachable,
    UsageError,
    report,
    settings_refused,
    warn,
)

CONNECT_TIMEOUT = 5.0  # seconds to reach the mailstore before saying it is not running


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


def run_admin(address: str, command: Command, args: Any, identity: Identity) -> None:
    assert command.api is not None
    channel = open_sync_channel(address, identity)
    try:
        if not _connected(channel, CONNECT_TIMEOUT):
            raise Unreachable(unreachable_message(address))
        try:
            command.handler(command.api.stub(channel), args, Output(args.json))
        except grpc.RpcError as err:
            # UNAVAILABLE without the mailstore's own ErrorDetail is the transport failing.
            detail = error_detail(err)
            if err.code() == grpc.StatusCode.UNAVAILABLE and detail is None:
                raise Unreachable(unreachable_message(address)) from None
            reason = pb.ErrorReason.Name(detail.reason) if detail is not None and detail.reason else ""
            raise CommandError(error_message(err), reason=reason) from None
    finally:
        channel.close()


def unreachable_message(address: str) -> str:
    return (
        f"mailstore not reachable at {address} (is `mailstack serve` running?"
        " is the admin identity from its CA? see `mailstack ca`)"
    )


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


class Parser(argparse.ArgumentParser):
    """An argument error is a UsageError (one line, JSON with --json, exit 2), not argparse's exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _epilog() -> str:
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    return (
        f"exit codes:\n{codes}\n\nErrors are one line on stderr; with --json, one JSON object on stderr:\n"
        '  {"error": {"kind": "...", "exit_code": N, "message": "...", "reason": "..."}}'
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in the table (commands.COMMANDS)."""
    parser = Parser(
        prog="mailstack",
        description="mailstack: SMTP, IMAP and POP3 over a gRPC mailstore.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mailstack {__version__}")
    _global_options(parser, top=True)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = Parser(add_help=False)
    _global_options(common, top=False)
    groups: dict[str, Any] = {}
    for command in COMMANDS:
        *group, name = command.words
        sub = top
        if group:
            if group[0] not in groups:
                parent = top.add_parser(group[0], help=GROUPS[group[0]])
                groups[group[0]] = parent.add_subparsers(dest="action", metavar="ACTION", required=True)
            sub = groups[group[0]]
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[common])
        add_arguments(p, command.args)
        p.set_defaults(spec=command, handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv  # known before parsing, so that argument errors are JSON too
    try:
        return _run(argv)
    except CommandError as err:
        return report(err, as_json)
    except KeyboardInterrupt:
        return report(Interrupted("interrupted"), as_json)
    except BrokenPipeError:  # `mailstack user list | head`: stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def _load(args: argparse.Namespace) -> Loaded:
    """The settings; a file that cannot be read or a value not of its setting's type is a UsageError."""
    try:
        loaded = load(config_file=args.config)
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError
        raise UsageError(f"settings: {err}") from None
    for warning in loaded.warnings:
        warn(warning, args.json)
    if loaded.errors:
        raise settings_refused(loaded.errors)
    return loaded


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    loaded = _load(args)
    settings = loaded.settings
    if args.spec.api is None:
        args.loaded = loaded  # serve and config check the settings further, and config shows their origins
        return int(args.handler(settings, args))
    address = args.mailstore or settings.mailstore_addr
    try:
        check_address(address)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        identity = admin_identity(settings)
    except IdentityError as err:
        raise CommandError(str(err)) from None
    run_admin(address, args.spec, args, identity)
    return EXIT_OK
