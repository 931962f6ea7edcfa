"""One `mailstack serve NAME...` process configured by environment variables, as an operator runs it
(several services in one process share one /metrics and one log), and the first account."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures.mailstore import mailstore_transport
from tests.fixtures.ports import free_port
from tests.fixtures.topology import ServiceProcess

ALICE, PASSWORD = "alice@example.test", "pw-alice-1"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def base_env(folder: Path, **settings: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSTACK_", "OTEL_"))}
    grpc_port = free_port()
    return {
        **inherited,
        "MAILSTACK_DATA_DIR": str(folder / "data"),
        "MAILSTACK_MAILSTORE_LISTEN": f"127.0.0.1:{grpc_port}",
        "MAILSTACK_MAILSTORE_ADDR": f"127.0.0.1:{grpc_port}",
        "MAILSTACK_SEND_LISTEN": f"127.0.0.1:{free_port()}",
        "MAILSTACK_MAILSTORE_TRANSPORT": mailstore_transport(),
        **{f"MAILSTACK_{k.upper()}": v for k, v in settings.items()},
    }


class Serve(ServiceProcess):
    """`mailstack serve NAME...`: several services in one process, so one /metrics shows them all."""

    def __init__(self, names: list[str], env: dict[str, str], ports: dict[str, int], log_path: Path) -> None:
        super().__init__(names[0], env, ports, log_path)
        self.names = names
        self.stderr_path: Path | None = None  # the log lines apart from the banner (stdout), when set

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log, (self.stderr_path or self.log_path).open("ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailstack", "serve", *self.names],
                env=self.env,
                cwd=self.log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=errors if self.stderr_path else subprocess.STDOUT,
            )


@contextmanager
def serving(
    folder: Path, names: list[str], env: dict[str, str], ports: dict[str, int], stderr: Path | None = None
) -> Iterator[Serve]:
    process = Serve(names, env, ports, folder / "serve.log")
    process.stderr_path = stderr
    try:
        process.start()
        yield process
    finally:
        process.stop()


def add_account(env: dict[str, str], **extra: str) -> None:
    args = [sys.executable, "-m", "mailstack", "user", "add", ALICE, "--password-stdin"]
    for key, value in extra.items():
        args += [f"--{key}", value]
    done = subprocess.run(args, env=env, input=PASSWORD.encode(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
