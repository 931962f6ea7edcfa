"""The `mailstack` command: run services, administer accounts, show settings.

Admin commands call the mailstore's gRPC API with the admin identity. Exit codes: 0 done,
1 the mailstore (or the settings) refused with a message, 2 usage errors and an
unreachable mailstore.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import grpc

from mailstack.services.common.config import load_settings
from mailstack.services.common.grpc_client import (
    Identity,
    IdentityError,
    admin_identity,
    check_address,
    error_detail,
    error_message,
    open_sync_channel,
)

from .commands import COMMANDS, GROUPS, Command, add_arguments
from .output import EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE, CommandError, Output, Unreachable

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
            raise Unreachable
        try:
            command.handler(command.api.stub(channel), args, Output(args.json))
        except grpc.RpcError as err:
            # UNAVAILABLE without the mailstore's own ErrorDetail is the transport failing.
            if err.code() == grpc.StatusCode.UNAVAILABLE and error_detail(err) is None:
                raise Unreachable from None
            raise CommandError(error_message(err)) from None
    finally:
        channel.close()


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


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in the table (commands.COMMANDS)."""
    parser = argparse.ArgumentParser(
        prog="mailstack", description="mailstack: SMTP, IMAP and POP3 over a gRPC mailstore."
    )
    _global_options(parser, top=True)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
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
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(config_file=args.config)
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError
        print(f"mailstack: settings: {err}", file=sys.stderr)
        return EXIT_ERROR
    address = args.mailstore or settings.mailstore_addr
    try:
        if args.spec.api is None:
            return int(args.handler(settings, args))
        try:
            check_address(address)
        except ValueError as err:
            print(f"mailstack: {err}", file=sys.stderr)
            return EXIT_UNREACHABLE
        try:
            identity = admin_identity(settings)
        except IdentityError as err:
            raise CommandError(str(err)) from None
        run_admin(address, args.spec, args, identity)
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
