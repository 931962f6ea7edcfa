"""The commands that run in this process without calling the mailstore: serve, config, the
internal CA, DKIM keys."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from mailstack.services.common.config import Loaded, Settings, check_settings, describe
from mailstack.services.common.grpc_client import IdentityError

from .output import EXIT_ERROR, EXIT_OK, CommandError, InUse, Output, UsageError, format_table, settings_refused


def cmd_dkim_keygen(settings: Settings, args: argparse.Namespace) -> int:
    """Write a new DKIM key and print the DNS record to publish (RFC 6376 §3.6.1)."""
    from pathlib import Path

    from mailstack.message.dkim_sign import dns_record, generate_key

    domain = args.domain.lower()
    # Absolute: MAILSTACK_DKIM_KEYS is read by a process that may run in another folder.
    path = Path(args.out or Path(settings.data_dir) / "dkim" / f"{domain}.{args.selector}.pem").resolve()
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
        print(f"(or MAILSTACK_DKIM_KEYS={path.parent}: every DOMAIN.SELECTOR.pem in the folder)")
    return EXIT_OK


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


def _origin(loaded: Loaded, name: str) -> str:
    origin = loaded.origins.get(name, "default")
    return "env" if origin == "environment" else origin


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """The effective settings, where each came from, and whether they would start (exit 2 if not).
    With --check only the verdict: what `serve` refuses, without starting anything."""
    loaded: Loaded = args.loaded
    errors = check_settings(loaded, args.services or None)
    if not args.check:
        named = zip(describe(settings), fields(Settings), strict=True)
        rows = [
            (n, v, _origin(loaded, f.name), h) for (n, v, h), f in named if f.name in loaded.origins or not args.changed
        ]
        if args.json:
            print(json.dumps([{"name": n, "value": v, "from": o, "help": h} for n, v, o, h in rows], indent=2))
        else:
            print(format_table(["SETTING", "VALUE", "FROM", "DESCRIPTION"], rows))
    if errors:
        raise settings_refused(errors)
    if args.check:
        Output(args.json).done({"settings": "valid"}, "settings are valid")
    return EXIT_OK


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The command line of a worker: `serve` with the same settings file (ADR 0043)."""
    return ["serve", *(["--config", str(Path(args.config).resolve())] if args.config else [])]


def _check_before_start(settings: Settings, args: argparse.Namespace, worker: int | None, count: int) -> None:
    """Ports, the data folder and what several workers cannot do; a worker's supervisor checked for it."""
    from mailstack.services.common import workers
    from mailstack.services.common.folder_lock import FolderInUse
    from mailstack.services.common.lifecycle import SERVICES, ServeError
    from mailstack.services.common.preflight import PortClash, PortProblem, preflight

    if worker is not None:
        return
    try:
        if count > 1:
            workers.check(settings, args.services, count)
        preflight(settings, args.services or SERVICES)
    except (PortClash, ServeError) as err:
        raise UsageError(str(err)) from None
    except (PortProblem, FolderInUse) as err:
        raise InUse(str(err)) from None


def _worker_count(settings: Settings, args: argparse.Namespace, worker: int | None) -> tuple[int, str]:
    """The workers to start, and why auto settled on one (ADR 0047); a worker is told its count."""
    from mailstack.services.common import workers

    if worker is not None:  # started by a supervisor that resolved the count already
        return workers.worker_count(settings), ""
    return workers.resolve(settings, args.services)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Check the settings, then the ports and the data folder, and only then start anything."""
    from mailstack.services.common import workers
    from mailstack.services.common.allocator import tune_allocator
    from mailstack.services.common.folder_lock import FolderInUse
    from mailstack.services.common.lifecycle import SERVICES, ServeError, run_services
    from mailstack.services.common.logs import setup_logging

    if unknown := [name for name in args.services if name not in SERVICES]:
        raise UsageError(f"unknown service {unknown[0]!r} (known: {', '.join(SERVICES)})")
    if errors := check_settings(args.loaded, args.services or list(SERVICES)):
        raise settings_refused(errors)
    worker = workers.current_worker()
    count, single = _worker_count(settings, args, worker)
    _check_before_start(settings, args, worker, count)
    setup_logging(settings.log_level, settings.log_format)
    if single and not args.services:  # auto, yet one process: say why (ADR 0047)
        logging.getLogger("mailstack.workers").info("one process, not one per CPU: %s", single)
    try:
        if count > 1 and worker is None:  # the supervisor of `count` workers (ADR 0043)
            return workers.Supervisor(settings, count, _worker_argv(args), sys.stdout).run()
        tune_allocator()
        if worker is not None:
            asyncio.run(workers.run_worker(settings, worker, count))
        else:
            asyncio.run(run_services(settings, args.services))
    except FolderInUse as err:  # taken since the preflight
        raise InUse(str(err)) from None
    except OSError as err:  # a port taken since the preflight, a file the settings name unreadable now, ...
        if err.errno == errno.EADDRINUSE or "cannot listen" in str(err):
            raise InUse(f"{err} (another mailstack may be running)") from None
        raise CommandError(str(err)) from None
    except (ServeError, IdentityError) as err:  # IdentityError: a gRPC identity file missing or unreadable
        raise CommandError(str(err)) from None
    return EXIT_OK
