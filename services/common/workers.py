"""Worker processes of the all-in-one `mailstack serve` (MAILSTACK_WORKERS, ADR 0043).

With N > 1 workers the `serve` process is a small supervisor: it checks what `serve` checks, holds
the data folder's lock, and starts N copies of itself (`python -m mailstack serve`, told their number
in WORKER_ENV). Each worker runs every service with its own in-process mailstore core over the same
data (one SQLite file in WAL, one blob folder) and binds every port with SO_REUSEPORT, so the kernel
spreads the connections. Change events and the session directory cross workers through a private
folder of the data dir (`storage/events/siblings.py`, `storage/sessions/files.py`) unless Redis
holds them. A worker that exits on its own stops the others and `serve` exits non-zero: the process
manager that restarts a failed `serve` (systemd, Kubernetes) restarts the whole, as it does today.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

from mailstack.services.common import internal_ca
from mailstack.services.common.config import Settings, env_name
from mailstack.services.common.folder_lock import FolderLock, lock_path
from mailstack.services.common.lifecycle import ServeError, prepare_data, run_services
from mailstack.services.common.preflight import Port, PortClash, PortProblem, try_bind
from mailstack.services.common.setting_rules import AUTO_WORKERS_MAX
from mailstack.storage import registry
from mailstack.storage.private_paths import private_dir

log = logging.getLogger("mailstack.workers")

WORKER_ENV = "_MAILSTACK_WORKER"  # set by the supervisor only: this process is worker number N
FOLDER = "workers"  # in the data dir: the sibling sockets and the session files
PARENT_CHECK_SECONDS = 1.0  # a worker whose supervisor is gone (SIGKILL) stops within this
# The mail ports each worker binds (LMTP's 0 means off, so it is not here).
SHARED_PORTS = (
    "smtp_port",
    "submission_port",
    "submissions_port",
    "imap_port",
    "imaps_port",
    "pop3_port",
    "pop3s_port",
)
SOCKET_PATH_MAX = 107  # sun_path of AF_UNIX on Linux, less the final NUL


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, and a container's CPU quota (cgroup v2) rounded
    up, since os.cpu_count() tells the host's."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return max(1, count)


def worker_count(settings: Settings) -> int:
    if settings.workers == "auto":
        return min(usable_cpus(), AUTO_WORKERS_MAX)
    return int(settings.workers)


def resolve(settings: Settings, names: Sequence[str], probe_ports: bool = True) -> tuple[int, str]:
    """How many workers `serve` starts, and why auto settled on one (else ""). A number is taken as
    given (check() refuses what it cannot do); auto (the default, ADR 0047) is one per usable CPU for
    the all-in-one `serve`, and one wherever workers cannot run: named services, a memory:// blob
    store, port 0, a unix gRPC listener, a busy metrics port + N (`probe_ports`: the healthcheck,
    asking about a `serve` that holds those ports, does not probe them)."""
    count = worker_count(settings)
    if settings.workers != "auto" or count == 1:
        return count, ""
    if names:
        return 1, "named services run as one process each"
    try:
        check(settings, names, count, probe_ports)
    except (ServeError, PortClash, PortProblem) as err:
        return 1, str(err)
    return count, ""


def current_worker() -> int | None:
    """This process's worker number when the supervisor started it, else None."""
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else None


def folder(settings: Settings) -> Path:
    return Path(settings.data_dir).resolve() / FOLDER


def check(settings: Settings, names: Sequence[str], count: int, probe_ports: bool = True) -> None:
    """ServeError for what several workers cannot do, before anything starts."""
    if names:
        raise ServeError(
            f"{env_name('workers')}={settings.workers}: workers run the all-in-one `mailstack serve` only; "
            f"run separate processes of {', '.join(names)} with {env_name('reuse_port')}=true instead"
        )
    if urlsplit(settings.effective_blob_url).scheme == "memory":
        raise ServeError(f"{env_name('workers')}={settings.workers}: a memory:// blob store is one process's own")
    for name in ("mailstore_listen", "send_listen"):
        value = str(getattr(settings, name))
        if value.startswith("unix:") or value.endswith(":0"):
            raise ServeError(
                f"{env_name(name)}={value}: workers share a TCP port (SO_REUSEPORT); give a fixed HOST:PORT"
            )
    if zero := [n for n in SHARED_PORTS if not getattr(settings, n)]:  # 0: any free port, another per worker
        raise ServeError(f"{env_name(zero[0])}=0: workers share each port; give it a fixed number")
    if settings.metrics_port and settings.metrics_port + count - 1 > 65535:
        raise ServeError(f"{env_name('metrics_port')}={settings.metrics_port}: worker N uses it + N, past 65535")
    if len(str(folder(settings) / f"{count}.sock")) > SOCKET_PATH_MAX:
        raise ServeError(
            f"{env_name('data_dir')}={settings.data_dir}: too long a path for the workers' sockets "
            f"({folder(settings)}); use a shorter data folder"
        )
    for i in range(1, count if settings.metrics_port and probe_ports else 0):
        try_bind(Port("metrics_port", settings.bind, settings.metrics_port + i))


def worker_changes(settings: Settings, index: int, count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """What worker `index` changes in the settings: for all its services, then for its mailstore only
    (the frontends keep calling it in-process and follow its Watch stream)."""
    common: dict[str, Any] = {"reuse_port": True}
    if settings.metrics_port:
        common["metrics_port"] = settings.metrics_port + index
    mailstore: dict[str, Any] = {}
    if urlsplit(settings.events_url).scheme == "memory":
        mailstore["events_url"] = f"workers://{folder(settings)}?worker={index}&count={count}"
    return common, mailstore


async def run_worker(settings: Settings, index: int, count: int) -> None:
    """One worker: every service, until a signal, or until its supervisor is gone."""
    common, mailstore = worker_changes(settings, index, count)
    stop = asyncio.Event()
    watch = asyncio.create_task(_watch_parent(os.getppid(), stop))
    # Worker 0 prints the banner; the others would repeat it.
    out = sys.stdout if index == 0 else io.StringIO()
    try:
        await run_services(settings.replace(**common), [], stop_event=stop, out=out, mailstore_changes=mailstore)
    finally:
        watch.cancel()


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop when the supervisor is gone (killed: it could forward nothing), else the ports stay taken."""
    while os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_CHECK_SECONDS)
        if stop.is_set():
            return
    log.error("the supervisor of this worker is gone; stopping")
    stop.set()


def prepare(settings: Settings) -> None:
    """What the first start creates, made once before the workers start, so they do not race for it:
    the data folder, the self-signed certificate, the internal CA and identities, the schema."""
    prepare_data(settings, [], True)
    private_dir(folder(settings))
    if not settings.grpc_cert and not settings.grpc_key and not settings.grpc_ca:
        internal_ca.ensure_data_identities(settings.data_dir)
    asyncio.run(_migrate(settings.effective_metadata_url))


async def _migrate(metadata_url: str) -> None:
    store = registry.open_metadata_store(metadata_url)
    try:
        await store.migrate()
    finally:
        await store.close()


class Supervisor:
    """Starts the workers, forwards SIGTERM/SIGINT (and SIGHUP), waits for them; any worker's own exit stops all."""

    def __init__(self, settings: Settings, count: int, argv: Sequence[str], out: TextIO) -> None:
        self.settings, self.count, self.argv, self.out = settings, count, list(argv), out
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.interrupts = 0

    def run(self) -> int:
        """The exit code of `serve`: 0 after a signal and a clean drain, else the first failure's."""
        path = lock_path(self.settings.effective_metadata_url)
        lock = FolderLock(path) if path is not None else None
        if lock is not None:
            lock.acquire()  # the workers share the folder; another `serve` may not
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            prepare(self.settings)
            for index in range(self.count):
                self.procs.append(self._start(index))
            pids = ", ".join(str(p.pid) for p in self.procs)
            print(f"{'workers':<10} {self.count:<12} pids {pids}", file=self.out, flush=True)
            if self.stopping:  # a signal while starting
                self._signal_all(signal.SIGTERM)
            return self._wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if lock is not None:
                lock.release()

    def _start(self, index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, WORKER_ENV: str(index)}
        # Its own session: a terminal's Ctrl-C reaches the supervisor only, which forwards one SIGTERM.
        return subprocess.Popen([sys.executable, "-m", "mailstack", *self.argv], env=env, start_new_session=True)

    def _wait(self) -> int:
        code = 0
        running = {p.pid: i for i, p in enumerate(self.procs)}
        while running:
            pid, status = os.waitpid(-1, 0)
            index = running.pop(pid, None)
            if index is None:
                continue
            returned = os.waitstatus_to_exitcode(status)
            self.procs[index].returncode = returned
            if not self.stopping:
                log.error("worker %d (pid %d) exited with %d; stopping the others", index, pid, returned)
                print(f"worker {index} (pid {pid}) exited ({returned}); stopping", file=sys.stderr, flush=True)
                self.stopping = True
                self._signal_all(signal.SIGTERM)
                code = code or (returned if returned > 0 else 1)
            elif returned != 0:
                code = code or (returned if returned > 0 else 1)
        return code

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGHUP:  # reload the TLS certificates (ADR 0031): each worker does it
            self._signal_all(signal.SIGHUP)
            return
        if sig == signal.SIGINT:
            self.interrupts += 1
        if self.interrupts > 1:  # the operator insists: no more waiting for sessions to drain
            self._signal_all(signal.SIGKILL)
            return
        if not self.stopping:
            self.stopping = True
            print(f"{signal.Signals(sig).name}: stopping the workers", file=self.out, flush=True)
            self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    continue
