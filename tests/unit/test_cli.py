"""The `mailstack` command at unit level: arguments, sizes, tables and JSON, exit codes,
and `serve`'s lifecycle with small stand-in services (the real services have their own tests)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from mailstack.services.common.config import Settings
from mailstack.services.common.grpc_client import identity_for
from mailstack.services.common.internal_ca import certificate_name, ensure_data_identities
from mailstack.services.common.lifecycle import ServeError, run_services
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

from mailstack import cli
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
MAILSTACK = Path(sys.executable).parent / "mailstack"

# ---------------------------------------------------------------- sizes and tables


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("10k", 10 * 1024),
        ("500M", 500 * 1024**2),
        ("2G", 2 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("3MB", 3 * 1024**2),
        ("1.5G", 3 * 1024**3 // 2),
        ("1T", 1024**4),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert cli.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "5X", "1.2.3G", "G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid size"):
        cli.parse_size(text)


def test_human_size() -> None:
    assert [cli.human_size(n) for n in (0, 1023, 1024, 1536 * 1024, 2 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 MiB",
        "2.0 GiB",
    ]


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    text = cli.format_table(["NAME", "COUNT"], [["alice@example.test", 5], ["bo@x.test", 120]])
    assert text.splitlines() == [
        "NAME                COUNT",
        "alice@example.test      5",
        "bo@x.test             120",
    ]


def test_empty_table_is_its_header() -> None:
    assert cli.format_table(["DOMAIN"], []) == "DOMAIN"


def test_accounts_table_shows_unlimited_and_sizes() -> None:
    accounts = [
        pb.Account(name="alice@example.test", quota_bytes=2 * 1024**3, used_bytes=1536 * 1024, used_messages=3),
        pb.Account(name="bob@example.test", quota_messages=100, aliases=["b@example.test", "postmaster@example.test"]),
    ]
    lines = cli.accounts_table(accounts).splitlines()
    assert lines[0].split() == ["ACCOUNT", "USED", "QUOTA", "MESSAGES", "MAX", "MESSAGES", "ALIASES"]
    assert lines[1].split() == ["alice@example.test", "1.5", "MiB", "2.0", "GiB", "3", "unlimited"]
    assert lines[2].split() == [
        *["bob@example.test", "0", "B", "unlimited", "0", "100"],
        *["b@example.test,", "postmaster@example.test"],
    ]


# ---------------------------------------------------------------- arguments


def test_user_add_arguments() -> None:
    args = cli.build_parser().parse_args(
        ["user", "add", "alice@example.test", "--password-stdin", "--quota-bytes", "2G", "--quota-messages", "1000"]
    )
    assert (args.address, args.password, args.password_stdin) == ("alice@example.test", None, True)
    assert (args.quota_bytes, args.quota_messages) == (2 * 1024**3, 1000)
    assert args.handler is cli.cmd_user_add


def test_global_options_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["--json", "--mailstore", "unix:/run/ms.sock", "user", "list"])
    after = parser.parse_args(["user", "list", "--json", "--mailstore", "unix:/run/ms.sock"])
    neither = parser.parse_args(["user", "list"])
    for args in (before, after):
        assert (args.json, args.mailstore, args.config) == (True, "unix:/run/ms.sock", None)
    assert (neither.json, neither.mailstore) == (False, None)


def test_password_options_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["user", "add", "a@example.test", "--password", "x", "--password-stdin"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_bad_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["user", "quota", "a@example.test", "--bytes", "lots"]) == 2
    assert capsys.readouterr().err == (
        "mailstack: argument --bytes: invalid size 'lots' (examples: 1048576, 500M, 2G)"
        " (see `mailstack user quota --help`)\n"
    )


def test_serve_names_and_optional_arguments() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["serve"]).services == []
    assert parser.parse_args(["serve", "mailstore", "imap"]).services == ["mailstore", "imap"]
    assert parser.parse_args(["alias", "list"]).account is None
    assert parser.parse_args(["quota", "recompute", "alice@example.test"]).account == "alice@example.test"


def test_serving_an_unknown_service_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "smtp", "ftp"]) == 2
    assert capsys.readouterr().err == (
        "mailstack: unknown service 'ftp' (known: mailstore, smtp, imap, pop3, outbound)\n"
    )


# ---------------------------------------------------------------- local commands


def test_config_masks_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MAILSTACK_TLS_KEY", "/run/secrets/key.pem")
    monkeypatch.setenv("MAILSTACK_EVENTS_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.delenv("MAILSTACK_CONFIG", raising=False)
    assert cli.main(["config", "--json"]) == 2  # printed, then refused: the key file is not there
    rows = {row["name"]: row["value"] for row in json.loads(capsys.readouterr().out)}
    assert rows["MAILSTACK_TLS_KEY"] == "***"
    assert rows["MAILSTACK_EVENTS_URL"] == "redis://:***@redis:6379/0"
    assert cli.main(["config"]) == 2
    text = capsys.readouterr().out
    assert "MAILSTACK_SMTP_PORT" in text and "hunter2" not in text and "/run/secrets" not in text


def test_bad_settings_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MAILSTACK_SMTP_PORT", "twenty-five")
    assert cli.main(["config"]) == 2
    assert "MAILSTACK_SMTP_PORT=twenty-five: not a whole number" in capsys.readouterr().err


def test_malformed_mailstore_address_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["domain", "list", "--mailstore", "nowhere"]) == 2
    assert "invalid mailstore address" in capsys.readouterr().err


def test_unreachable_mailstore_exits_3_quickly(tmp_path: Path) -> None:
    port = free_port()
    ensure_data_identities(tmp_path)
    started = time.monotonic()
    proc = subprocess.run(
        [str(MAILSTACK), "user", "list", "--mailstore", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MAILSTACK_DATA_DIR": str(tmp_path)},
    )
    assert proc.returncode == 3, proc.stderr
    assert f"mailstore not reachable at 127.0.0.1:{port} (is `mailstack serve` running?" in proc.stderr
    assert proc.stdout == ""
    assert time.monotonic() - started < 15


def test_admin_command_without_an_admin_identity_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAILSTACK_DATA_DIR", str(tmp_path / "elsewhere"))
    assert cli.main(["user", "list", "--mailstore", f"127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert f"no admin identity in {tmp_path / 'elsewhere' / 'grpc'}" in err
    assert not (tmp_path / "elsewhere").exists()  # the CLI never makes a CA of its own


def test_ca_init_and_issue_write_secret_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert cli.main(["ca", "init", "--dir", str(ca)]) == 0
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600 and ca.stat().st_mode & 0o777 == 0o700
    first = (ca / "ca.crt").read_bytes()
    assert cli.main(["ca", "init", "--dir", str(ca)]) == 0  # kept, not replaced
    assert (ca / "ca.crt").read_bytes() == first
    out = tmp_path / "secrets" / "smtp"
    assert cli.main(["ca", "issue", "smtp", "--ca", str(ca), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]  # cert-manager's names
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600
    assert certificate_name((out / "tls.crt").read_bytes()) == "smtp" and (out / "ca.crt").read_bytes() == first
    cert = (out / "tls.crt").read_bytes()
    assert cli.main(["ca", "issue", "smtp", "--ca", str(ca), "--out", str(out)]) == 0  # idempotent: kept
    assert (out / "tls.crt").read_bytes() == cert and "kept" in capsys.readouterr().out
    assert cli.main(["ca", "issue", "bad name", "--ca", str(ca), "--out", str(tmp_path / "x")]) == 1
    assert cli.main(["ca", "issue", "imap", "--ca", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 1


# ---------------------------------------------------------------- admin calls over real gRPC


class RecordingAdmin(pbg.AdminServicer):
    """A small Admin service: the CLI's side of the protocol (the real one is tested with the mailstore)."""

    def __init__(self) -> None:
        self.created: list[pb.CreateAccountRequest] = []
        self.quotas: list[pb.SetQuotaRequest] = []

    def CreateAccount(self, request: pb.CreateAccountRequest, context: Any) -> pb.Account:
        self.created.append(request)
        return pb.Account(name=request.name, quota_bytes=request.quota_bytes)

    def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        return pb.Account(name=request.name, quota_bytes=1024, quota_messages=50)

    def SetQuota(self, request: pb.SetQuotaRequest, context: Any) -> pb.Account:
        self.quotas.append(request)
        return pb.Account(name=request.name, quota_bytes=request.quota_bytes, quota_messages=request.quota_messages)

    def ListAccounts(self, request: pb.ListAccountsRequest, context: Any) -> pb.ListAccountsResponse:
        return pb.ListAccountsResponse(
            accounts=[
                pb.Account(name="alice@example.test", used_bytes=2048, used_messages=2, aliases=["al@example.test"])
            ]
        )

    def DeleteAccount(self, request: pb.DeleteAccountRequest, context: Any) -> pb.Empty:
        detail = pb.ErrorDetail(reason=pb.ACCOUNT_NOT_FOUND, message=request.name)
        context.set_trailing_metadata([("mailstack-error-bin", detail.SerializeToString())])
        context.abort(grpc.StatusCode.NOT_FOUND, "not found")
        raise AssertionError("abort returns never")

    def ListDomains(self, request: pb.ListDomainsRequest, context: Any) -> pb.ListDomainsResponse:
        context.abort(grpc.StatusCode.INTERNAL, "database exploded")
        raise AssertionError("abort returns never")


@pytest.fixture
def admin_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, RecordingAdmin]]:
    """Serves with the mailstore identity of a data folder the CLI finds through MAILSTACK_DATA_DIR."""
    data_dir = tmp_path / "admin-data"
    ensure_data_identities(data_dir)
    monkeypatch.setenv("MAILSTACK_DATA_DIR", str(data_dir))
    identity = identity_for(Settings(data_dir=str(data_dir)), "mailstore")
    servicer = RecordingAdmin()  # type: ignore[abstract]  # answers only the calls these tests make
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pbg.add_AdminServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", identity.server_credentials())
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None).wait(5)


def test_user_add_reads_the_password_from_stdin(
    admin_server: tuple[str, RecordingAdmin], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = admin_server
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\n"))
    argv = ["user", "add", "carol@example.test", "--password-stdin", "--quota-bytes", "1G", "--mailstore", address]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == "created carol@example.test"
    (request,) = servicer.created
    assert (request.name, request.password, request.quota_bytes) == ("carol@example.test", "correct horse", 1024**3)


def test_user_add_without_password_when_not_interactive(
    admin_server: tuple[str, RecordingAdmin], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = admin_server
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["user", "add", "carol@example.test", "--mailstore", address]) == 2  # a usage error
    assert "--password-stdin" in capsys.readouterr().err
    assert servicer.created == []


def test_user_list_as_table_and_json(
    admin_server: tuple[str, RecordingAdmin], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = admin_server
    assert cli.main(["user", "list", "--mailstore", address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ACCOUNT") and lines[1].split()[:3] == ["alice@example.test", "2.0", "KiB"]
    assert cli.main(["--json", "user", "list", "--mailstore", address]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {
            "name": "alice@example.test",
            "quota_bytes": 0,
            "quota_messages": 0,
            "used_bytes": 2048,
            "used_messages": 2,
            "aliases": ["al@example.test"],
        }
    ]


def test_user_quota_keeps_the_limit_not_given(admin_server: tuple[str, RecordingAdmin]) -> None:
    address, servicer = admin_server
    assert cli.main(["user", "quota", "a@example.test", "--bytes", "2G", "--mailstore", address]) == 0
    (request,) = servicer.quotas
    assert (request.quota_bytes, request.quota_messages) == (2 * 1024**3, 50)


def test_mailstore_error_detail_is_one_line_on_stderr(
    admin_server: tuple[str, RecordingAdmin], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = admin_server
    assert cli.main(["user", "delete", "ghost@example.test", "--mailstore", address]) == 1
    assert capsys.readouterr().err == "mailstack: account not found: ghost@example.test\n"
    assert cli.main(["domain", "list", "--mailstore", address]) == 1  # no ErrorDetail: the status details
    assert capsys.readouterr().err == "mailstack: database exploded\n"


# ---------------------------------------------------------------- serve: order, addresses, shutdown

EVENTS: list[str] = []


class StandInMailstore:
    """Listens on a real socket like the mailstore; records what happens to it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: asyncio.Server | None = None
        self.closed = asyncio.Event()

    async def start(self) -> None:
        host = self.settings.mailstore_listen.rpartition(":")[0]
        self.server = await asyncio.start_server(lambda r, w: w.close(), host, 0)
        EVENTS.append("start mailstore")

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def stop(self, grace: float) -> None:
        EVENTS.append(f"stop mailstore grace={grace:g}")
        print("stopped mailstore", flush=True)
        assert self.server is not None
        self.server.close()
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()


class StandInFrontend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.closed = asyncio.Event()

    async def start(self) -> None:
        EVENTS.append(f"start frontend mailstore_addr={self.settings.mailstore_addr}")

    @property
    def listeners(self) -> list[tuple[str, str]]:
        return [("TEST", "127.0.0.1:1"), ("TEST/TLS", "127.0.0.1:2")]

    async def stop(self, grace: float) -> None:
        EVENTS.append(f"stop frontend grace={grace:g}")
        print("stopped frontend", flush=True)
        if os.environ.get("STAND_IN_SLOW_STOP"):
            await asyncio.sleep(60)
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()


class CrashingFrontend(StandInFrontend):
    async def wait_closed(self) -> None:
        await asyncio.sleep(0.05)


TABLE = {
    "frontend": "tests.unit.test_cli:StandInFrontend",
    "mailstore": "tests.unit.test_cli:StandInMailstore",
    "later": "tests.unit.not_written_yet:LaterServer",
}
CRASHING_TABLE = {**TABLE, "crashing": "tests.unit.test_cli:CrashingFrontend"}


def settings_in(tmp_path: Path, listen: str = "127.0.0.1:0") -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), mailstore_listen=listen)


async def test_all_in_one_starts_mailstore_first_and_stops_it_last(tmp_path: Path) -> None:
    EVENTS.clear()
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(run_services(settings_in(tmp_path), [], table=TABLE, stop_event=stop, out=out))
    for _ in range(200):
        if "data" in out.getvalue():
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)

    bound = EVENTS[1].rpartition("=")[2]
    assert EVENTS == [
        "start mailstore",
        f"start frontend mailstore_addr={bound}",  # the address the mailstore actually bound
        "stop frontend grace=10",
        "stop mailstore grace=5",
    ]
    assert bound.startswith("127.0.0.1:") and not bound.endswith(":0")
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["mailstore", "gRPC", bound]
    assert lines[1].split() == ["frontend", "TEST", "127.0.0.1:1"]
    assert lines[3].split() == ["data", str((tmp_path / "data").resolve())]
    assert (tmp_path / "data" / "tls" / "cert.pem").exists()  # self-signed on first start


async def test_wildcard_listen_address_is_dialled_on_loopback(tmp_path: Path) -> None:
    EVENTS.clear()
    stop = asyncio.Event()
    stop.set()
    await run_services(settings_in(tmp_path, "0.0.0.0:0"), [], table=TABLE, stop_event=stop, out=io.StringIO())
    assert EVENTS[1].startswith("start frontend mailstore_addr=127.0.0.1:")


async def test_naming_a_service_not_written_yet(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="later is not available yet"):
        await run_services(settings_in(tmp_path), ["later"], table=TABLE, out=io.StringIO())
    with pytest.raises(ServeError, match="unknown service 'nntp'"):
        await run_services(settings_in(tmp_path), ["nntp"], table=TABLE, out=io.StringIO())


async def test_a_service_that_stops_by_itself_stops_the_rest(tmp_path: Path) -> None:
    EVENTS.clear()
    run = run_services(settings_in(tmp_path), ["mailstore", "crashing"], table=CRASHING_TABLE, out=io.StringIO())
    with pytest.raises(ServeError, match="crashing stopped unexpectedly"):
        await asyncio.wait_for(run, 10)
    assert EVENTS[-2:] == ["stop frontend grace=10", "stop mailstore grace=5"]


SERVE_SCRIPT = """
import asyncio, sys
from mailstack.services.common.config import Settings
from mailstack.services.common.lifecycle import run_services
from tests.unit.test_cli import TABLE
asyncio.run(run_services(Settings(data_dir=sys.argv[1], mailstore_listen="127.0.0.1:0"), [], table=TABLE))
"""


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[[bool], subprocess.Popen[str]]]:
    """Starts `run_services` with the stand-ins in a child process, returns once it printed its banner."""
    procs: list[subprocess.Popen[str]] = []

    def start(slow_stop: bool = False) -> subprocess.Popen[str]:
        env = {**os.environ, "STAND_IN_SLOW_STOP": "1" if slow_stop else ""}
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE_SCRIPT, str(tmp_path / "data")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        for _ in range(20):  # the banner is a few lines; EOF ends it early on a crash
            line = proc.stdout.readline()
            if not line or line.startswith("data"):
                break
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_frontends_then_mailstore_and_exits_0(
    serve_process: Callable[[bool], subprocess.Popen[str]], sig: signal.Signals
) -> None:
    proc = serve_process(False)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out.splitlines()[-2:] == ["stopped frontend", "stopped mailstore"]


def test_second_sigint_exits_at_once(serve_process: Callable[[bool], subprocess.Popen[str]]) -> None:
    proc = serve_process(True)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    for _ in range(5):  # "SIGINT: shutting down ...", then the frontend starts its (slow) stop
        if proc.stdout.readline() in ("stopped frontend\n", ""):
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGINT
