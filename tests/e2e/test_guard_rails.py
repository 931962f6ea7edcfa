"""What an operator sees when something is wrong, from the real `mailstack` command.

Bad settings: `mailstack serve` answers with one line naming the setting, its value and what is
allowed, exits 2, and starts nothing (no banner line, no data folder). A port taken by another
mailstack, or a data folder another mailstore holds: one line, exit 4. Admin commands: a refused
domain delete leaves mail for the domain working; Ctrl-D and Ctrl-C at the password prompt end with
one line; with --json errors are JSON on stderr; every exit code is documented.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from mailstack.services.common.tls import ensure_self_signed

from tests.fixtures.mailstore import mailstore_transport
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

MAILSTACK = Path(sys.executable).parent / "mailstack"
REPO = Path(__file__).resolve().parents[2]
MAIL_PORTS = ("SMTP", "SUBMISSION", "SUBMISSIONS", "IMAP", "IMAPS", "POP3", "POP3S")
START_TIMEOUT = 60.0


def clean_environment() -> dict[str, str]:
    """This machine's environment without any MAILSTACK_* a developer or CI may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}


def serve_env(data_dir: Path) -> dict[str, str]:
    """A complete, valid all-in-one configuration on free ports."""
    mailstore = f"127.0.0.1:{free_port()}"
    env = {
        **clean_environment(),
        "MAILSTACK_DATA_DIR": str(data_dir),
        "MAILSTACK_MAILSTORE_LISTEN": mailstore,
        "MAILSTACK_MAILSTORE_ADDR": mailstore,
        "MAILSTACK_SEND_LISTEN": f"127.0.0.1:{free_port()}",
        "MAILSTACK_PASSWORD_SCRYPT_LOG_N": "10",
        "MAILSTACK_OUTBOUND_RESOLVER": "static:*=127.0.0.1:9",
        "MAILSTACK_LMTP_PORT": str(free_port()),  # its default is a fixed port another test may hold
        "MAILSTACK_MAILSTORE_TRANSPORT": mailstore_transport(),
    }
    env.update({f"MAILSTACK_{name}_PORT": str(free_port()) for name in MAIL_PORTS})
    return env


def run(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it (from a folder of no importance: every path is absolute)."""
    return subprocess.run(
        [str(MAILSTACK), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, cwd="/"
    )


@dataclass
class Served:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    banner: list[str]

    def port(self, name: str) -> int:
        return int(self.env[f"MAILSTACK_{name}_PORT"])


def start_serve(env: dict[str, str], *services: str) -> Served:
    proc = subprocess.Popen(
        [str(MAILSTACK), "serve", *services],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=str(Path(env["MAILSTACK_DATA_DIR"]).parent),
    )
    assert proc.stdout is not None
    banner: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"serve exited before its banner: {banner}")
        banner.append(line)
        if line.startswith(("data", "mailstore  (remote)")):
            return Served(proc, env, banner)
    proc.kill()
    raise AssertionError("serve printed no banner in time")


def stop_serve(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGTERM)
        try:
            served.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.communicate()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One all-in-one `mailstack serve` for the admin-command tests of this module."""
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    running = start_serve(serve_env(data_dir))
    try:
        yield running
    finally:
        stop_serve(running)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# ---------------------------------------------------------------- bad settings: one line, exit 2, nothing started


def cert_pair(folder: Path, name: str) -> tuple[str, str]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    ensure_self_signed(str(cert), str(key), "mx.example.test")
    return str(cert), str(key)


BAD_SETTINGS = [
    # (variable, value, what the line must say after "MAILSTACK_X=value: ")  -- the four first
    ("OUTBOUND_RETRY_SCHEDULE", "abc", "'abc' is not a number; allowed: comma-separated seconds >= 0"),
    ("BIND", "999.1.1.1", "not an IP address or host name; allowed: an IP address or name of this machine"),
    ("TLS_CERT", "{tmp}/missing.pem", "no such file; allowed: empty, or the path of a readable file"),
    ("IMAP_PORT", "99999", "out of range; allowed: a port number 0..65535"),
    ("SMTP_PORT", "twenty-five", "not a whole number; allowed: a port number 0..65535"),
    ("POP3S_PORT", "-1", "out of range; allowed: a port number 0..65535"),
    ("MAILSTORE_LISTEN", "127.0.0.1:70000", "port not 0..65535; allowed: HOST:PORT to listen on"),
    ("SEND_LISTEN", "localhost", "no :PORT; allowed: HOST:PORT to listen on"),
    ("MAILSTORE_ADDR", "mailstore", "no :PORT; allowed: HOST:PORT (port 1..65535), dns:///HOST:PORT"),
    ("LOG_LEVEL", "loud", "not one of them; allowed: one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("LOG_FORMAT", "xml", "not one of them; allowed: one of text, json"),
    ("EVENTS_URL", "redis:/localhost", "not a URL; allowed: a URL starting memory://, redis://"),
    ("BLOB_URL", "ftp://host/blobs", "unsupported scheme; allowed: empty, or a URL starting file://, s3://"),
    ("PROXY_TRUSTED_NETWORKS", "10.0.0.0/33", "'10.0.0.0/33' is not a network; allowed: comma-separated networks"),
    ("OUTBOUND_RESOLVER", "static:example.test", "'example.test' is not DOMAIN=HOST:PORT; allowed: dns, or static:"),
    ("OUTBOUND_SMARTHOST", "relay.example.test", "no :PORT; allowed: empty, or HOST:PORT"),
    ("DKIM_KEYS", "example.test=sel:{tmp}/nokey.pem", "{tmp}/nokey.pem: no such file; allowed: empty, or DOMAIN="),
    ("SUBMISSION_FROM_CHECK", "lenient", "not one of them; allowed: one of strict, envelope, off"),
    ("PASSWORD_SCRYPT_LOG_N", "30", "out of range; allowed: a whole number 10..20"),
    ("SMTP_MAX_RECIPIENTS", "0", "out of range; allowed: a whole number >= 1"),
    ("ALLOW_PLAINTEXT_AUTH", "maybe", "not a boolean; allowed: true or false"),
    ("HOSTNAME", "mx example", "not a host name; allowed: a host name such as mx.example.test"),
]


@pytest.mark.parametrize(("name", "value", "said"), BAD_SETTINGS, ids=[case[0] for case in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_exit_2_and_nothing_starts(tmp_path: Path, name: str, value: str, said: str) -> None:
    env = serve_env(tmp_path / "data")
    ports = [int(env[f"MAILSTACK_{p}_PORT"]) for p in MAIL_PORTS]
    value = value.format(tmp=tmp_path)
    env[f"MAILSTACK_{name}"] = value
    if name == "TLS_CERT":
        env["MAILSTACK_TLS_KEY"] = str(tmp_path / "missing.key")
    done = run(["serve"], env)
    shown = repr(value) if " " in value else value
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 + (name == "TLS_CERT"), lines  # the key is missing too: a line of its own
    assert lines[0].startswith(f"mailstack: MAILSTACK_{name}={shown}: {said.format(tmp=tmp_path)}"), lines[0]
    assert done.stdout == ""  # no listener's banner line
    assert not (tmp_path / "data").exists()  # nothing started: not even the data folder or its CA
    assert all(port_is_free(port) for port in ports)
    # `config --check` says the same without starting anything
    check = run(["config", "--check"], env)
    assert check.returncode == 2 and check.stderr.splitlines()[0] == lines[0] and check.stdout == ""


def test_the_file_a_bad_value_came_from_is_named(tmp_path: Path) -> None:
    config = tmp_path / "mailstack.toml"
    config.write_text("[imap]\nport = 99999\n")
    env = serve_env(tmp_path / "data")
    del env["MAILSTACK_IMAP_PORT"]
    done = run(["serve", "--config", str(config)], env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"mailstack: MAILSTACK_IMAP_PORT=99999 (from {config}: imap.port): out of range; "
        "allowed: a port number 0..65535 (0: any free port)\n"
    )


def test_a_certificate_that_is_not_its_key_s(tmp_path: Path) -> None:
    env = serve_env(tmp_path / "data")
    cert, _ = cert_pair(tmp_path, "one")
    _, other_key = cert_pair(tmp_path, "two")
    env.update(MAILSTACK_TLS_CERT=cert, MAILSTACK_TLS_KEY=other_key)
    done = run(["serve", "imap"], env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (
        f"mailstack: MAILSTACK_TLS_CERT={cert}: does not load as a PEM certificate with the key {other_key}; "
        "allowed: MAILSTACK_TLS_CERT and MAILSTACK_TLS_KEY both (a PEM certificate and its key), or neither\n"
    )
    env.update(MAILSTACK_TLS_KEY="")  # one without the other
    done = run(["serve", "imap"], env)
    assert done.returncode == 2 and "MAILSTACK_TLS_KEY is not set" in done.stderr


def test_a_file_only_other_services_read_is_not_asked_for(tmp_path: Path) -> None:
    """A ConfigMap shared by every workload names the mail certificate; the mailstore's pod does
    not mount it, and `serve mailstore` must not refuse to start for that."""
    env = serve_env(tmp_path / "data")
    env.update(MAILSTACK_TLS_CERT="/etc/mailstack/tls/tls.crt", MAILSTACK_TLS_KEY="/etc/mailstack/tls/tls.key")
    assert run(["config", "--check", "mailstore", "outbound"], env).returncode == 0
    assert run(["config", "--check", "smtp"], env).returncode == 2
    running = start_serve(env, "mailstore")
    try:
        assert any(line.startswith("mailstore  gRPC") for line in running.banner)
    finally:
        stop_serve(running)


def test_two_listeners_on_one_port_is_a_settings_error(tmp_path: Path) -> None:
    env = serve_env(tmp_path / "data")
    env["MAILSTACK_IMAPS_PORT"] = env["MAILSTACK_SMTP_PORT"]
    done = run(["serve"], env)
    assert (done.returncode, done.stdout) == (2, "")
    port = env["MAILSTACK_SMTP_PORT"]
    assert done.stderr == (
        f"mailstack: MAILSTACK_IMAPS_PORT={port}: MAILSTACK_SMTP_PORT has that port too; "
        "allowed: a port of its own for each listener\n"
    )


def test_an_unknown_variable_is_a_warning_naming_the_closest_setting(tmp_path: Path) -> None:
    env = {**serve_env(tmp_path / "data"), "MAILSTACK_SMTP_PROT": "25"}
    done = run(["config", "--check"], env)
    assert done.returncode == 0
    assert done.stderr == (
        "mailstack: warning: MAILSTACK_SMTP_PROT is not a setting; did you mean MAILSTACK_SMTP_PORT? (ignored)\n"
    )
    done = run(["--json", "config", "--check"], env)
    assert json.loads(done.stderr) == {
        "warning": "MAILSTACK_SMTP_PROT is not a setting; did you mean MAILSTACK_SMTP_PORT? (ignored)"
    }


def test_config_says_where_each_value_came_from(tmp_path: Path) -> None:
    config = tmp_path / "mailstack.toml"
    config.write_text('hostname = "mx.example.test"\n[smtp]\nmax_recipients = 50\n')
    env = {**serve_env(tmp_path / "data"), "MAILSTACK_CONFIG": str(config)}
    done = run(["config", "--json"], env)
    assert done.returncode == 0, done.stderr
    origin = {row["name"]: row["from"] for row in json.loads(done.stdout)}
    assert origin["MAILSTACK_HOSTNAME"] == f"{config}: hostname"
    assert origin["MAILSTACK_SMTP_MAX_RECIPIENTS"] == f"{config}: smtp.max_recipients"
    assert origin["MAILSTACK_IMAP_PORT"] == "env" and origin["MAILSTACK_POP3_IDLE_TIMEOUT"] == "default"
    changed = run(["config", "--json", "--changed"], env)  # as `postconf -n`: what differs from the defaults
    assert {row["name"] for row in json.loads(changed.stdout)} == {n for n, o in origin.items() if o != "default"}
    assert "MAILSTACK_HOSTNAME" in {row["name"] for row in json.loads(changed.stdout)}


# ---------------------------------------------------------------- ports and the data folder in use: exit 4


def test_a_second_mailstack_on_the_same_ports_is_one_line(served: Served, tmp_path: Path) -> None:
    env = {**served.env, "MAILSTACK_DATA_DIR": str(tmp_path / "other")}
    done = run(["serve"], env)
    port = served.env["MAILSTACK_MAILSTORE_LISTEN"].rsplit(":", 1)[1]
    assert (done.returncode, done.stdout) == (4, "")
    assert done.stderr == (
        f"mailstack: port {port} (127.0.0.1:{port}) is in use: another mailstack is probably running (stop it), "
        "or move this one with MAILSTACK_MAILSTORE_LISTEN\n"
    )
    assert "GRPC_VERBOSITY" not in done.stderr


def test_a_frontend_port_in_use_names_its_setting(served: Served, tmp_path: Path) -> None:
    env = {**serve_env(tmp_path / "data"), "MAILSTACK_POP3S_PORT": str(served.port("POP3S"))}
    done = run(["serve", "pop3"], env)
    assert done.returncode == 4 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert f"port {served.port('POP3S')} " in done.stderr and "move this one with MAILSTACK_POP3S_PORT" in done.stderr
    assert "another mailstack is probably running" in done.stderr


def test_a_second_mailstore_on_the_same_data_folder_is_refused(served: Served) -> None:
    env = {**serve_env(Path(served.env["MAILSTACK_DATA_DIR"]))}  # same folder, ports of its own
    done = run(["serve", "mailstore"], env)
    data = served.env["MAILSTACK_DATA_DIR"]
    assert (done.returncode, done.stdout) == (4, "")
    assert done.stderr == (
        f"mailstack: data folder {data} is in use by another mailstore (pid {served.proc.pid}): stop it, "
        f"or give this one its own MAILSTACK_DATA_DIR (lock file {data}/mailstore.lock)\n"
    )


# ---------------------------------------------------------------- admin commands


def admin(served: Served, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run(list(args), served.env, stdin=stdin)


def rcpt(served: Served, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", served.port("SMTP"), timeout=30) as smtp:
        smtp.ehlo("client.example.test")
        smtp.mail("sender@elsewhere.test")
        code, _ = smtp.rcpt(address)
        return code


def test_domain_delete_is_refused_while_it_has_accounts_and_mail_keeps_working(served: Served) -> None:
    assert admin(served, "user", "add", "ann@keep.test", "--password-stdin", stdin="pw-ann\n").returncode == 0
    assert admin(served, "user", "add", "bob@keep.test", "--password-stdin", stdin="pw-bob\n").returncode == 0
    assert admin(served, "alias", "add", "postmaster@keep.test", "ann@keep.test").returncode == 0
    refused = admin(served, "domain", "delete", "keep.test")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        "mailstack: not allowed: domain keep.test still has 2 accounts and 1 alias: delete them first, "
        "or force the delete (`mailstack domain delete --force`) to delete them with it\n"
    )
    as_json = admin(served, "--json", "domain", "delete", "keep.test")
    error = json.loads(as_json.stderr)["error"]
    assert (as_json.returncode, as_json.stdout) == (1, "")
    assert (error["kind"], error["exit_code"], error["reason"]) == ("refused", 1, "NOT_ALLOWED")
    # The domain is still served: its users get mail, a typo is an unknown user (not relayed).
    assert "keep.test" in json.loads(admin(served, "--json", "domain", "list").stdout)
    assert rcpt(served, "ann@keep.test") == 250 and rcpt(served, "postmaster@keep.test") == 250
    assert rcpt(served, "typo@keep.test") == 550
    forced = admin(served, "domain", "delete", "keep.test", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == "deleted domain keep.test with its 2 accounts (and their mail) and 1 alias\n"
    assert "keep.test" not in json.loads(admin(served, "--json", "domain", "list").stdout)
    accounts = [a["name"] for a in json.loads(admin(served, "--json", "user", "list").stdout)]
    assert not [name for name in accounts if name.endswith("@keep.test")]
    # Relay access denied: no longer ours. (bob: ann's RCPT answer may sit in the SMTP frontend's
    # 5-second recipient cache, which DATA checks again.)
    assert rcpt(served, "bob@keep.test") == 554


def test_an_empty_domain_is_deleted_without_force(served: Served) -> None:
    assert admin(served, "domain", "add", "empty.test").returncode == 0
    done = admin(served, "domain", "delete", "empty.test")
    assert (done.returncode, done.stdout) == (0, "deleted domain empty.test\n")


def prompt_session(served: Served, key: bytes) -> tuple[int, str]:
    """`mailstack user add` on a terminal; at "Password: " the operator presses key. (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own, as an operator's shell gives it
        # with Ctrl-C meaning SIGINT, as a shell sets it for its foreground job (a test run started
        # in the background inherits SIGINT ignored, and so would the command)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execve(str(MAILSTACK), [str(MAILSTACK), "user", "add", "tty@prompt.test"], served.env)
    output = b""
    deadline = time.monotonic() + 60
    sent = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        if not sent and b"Password: " in output:
            os.write(fd, key)
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.parametrize(
    ("key", "code", "line"),
    [
        (b"\x04", 2, "mailstack: no password given (end of input at the prompt); nothing changed"),
        (b"\x03", 130, "mailstack: interrupted at the password prompt; nothing changed"),
    ],
    ids=["ctrl-d", "ctrl-c"],
)
def test_ctrl_d_or_ctrl_c_at_the_password_prompt_is_one_line(served: Served, key: bytes, code: int, line: str) -> None:
    exit_code, output = prompt_session(served, key)
    assert exit_code == code, output
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == line
    assert [text.strip() for text in output.strip().splitlines() if text.strip()] == ["Password:", line]
    assert admin(served, "user", "show", "tty@prompt.test").returncode == 1  # nothing was created


def test_exit_codes_tell_usage_unreachable_and_refused_apart(served: Served, tmp_path: Path) -> None:
    usage = admin(served, "user", "add")
    assert usage.returncode == 2 and usage.stderr.startswith("mailstack: the following arguments are required")
    refused = admin(served, "user", "delete", "nobody@nowhere.test")
    assert refused.returncode == 1 and "account not found" in refused.stderr
    env = {**served.env, "MAILSTACK_MAILSTORE_ADDR": f"127.0.0.1:{free_port()}"}
    unreachable = run(["user", "list"], env)
    assert unreachable.returncode == 3 and "mailstore not reachable" in unreachable.stderr
    for done in (usage, refused, unreachable):
        assert len(done.stderr.splitlines()) == 1 and done.stdout == ""


def test_with_json_every_error_is_one_json_object_on_stderr(served: Served) -> None:
    env = {**served.env, "MAILSTACK_MAILSTORE_ADDR": f"127.0.0.1:{free_port()}"}
    cases = [
        (run(["--json", "user", "add"], served.env), 2, "usage"),
        (run(["--json", "user", "delete", "nobody@nowhere.test"], served.env), 1, "refused"),
        (run(["--json", "user", "list"], env), 3, "unreachable"),
        (run(["--json", "config"], {**served.env, "MAILSTACK_IMAP_PORT": "99999"}), 2, "usage"),
    ]
    for done, code, kind in cases:
        error = json.loads(done.stderr)["error"]
        assert (done.returncode, error["exit_code"], error["kind"]) == (code, code, kind)
        assert error["message"] and "\n" not in error["message"]
    settings_error = json.loads(cases[3][0].stderr)["error"]
    assert settings_error["details"] == [
        {"setting": "MAILSTACK_IMAP_PORT", "value": "99999", "problem": "out of range",
         "allowed": "a port number 0..65535 (0: any free port)"}
    ]  # fmt: skip


def test_version_and_the_documented_exit_codes() -> None:
    env = clean_environment()
    version = run(["--version"], env)
    assert (version.returncode, version.stdout) == (0, f"mailstack {metadata.version('mailstack')}\n")
    help_text = run(["--help"], env).stdout
    readme = (REPO / "README.md").read_text()
    for code in (0, 1, 2, 3, 4, 130):
        assert f"\n  {code:<4} " in help_text
        assert f"\n| {code} |" in readme
