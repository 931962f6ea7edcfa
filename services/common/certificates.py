"""The mail listeners' TLS certificates: several (SNI), reloaded without a restart.

The listeners and STARTTLS hold one SSLContext for their whole life (`CertificateStore.context`).
It carries no certificate of its own: its SNI callback, which OpenSSL calls on every ClientHello
(with or without a server name), hands the handshake the context of the certificate chosen for
that name. A reload builds new contexts and swaps them in, so new handshakes get the new
certificate while sessions already established keep the one they negotiated.

A reload happens on SIGHUP (`reload_all`) and when a certificate or key file changes: cert-manager
and Kubernetes replace mounted files by swapping a symlink, so the watcher compares the resolved
path, inode, size and mtime of each file every `tls_reload_interval` seconds. A pair that fails to
load (a key that does not match, a half-written file) is logged and the previous one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID
from mailstack.services.common.metrics import TLS_CERT_EXPIRY
from mailstack.services.common.tls import server_ssl_context

log = logging.getLogger("mailstack.tls")

Signature = tuple[tuple[str, int, int, int, int], ...]  # per file: resolved path, device, inode, size, mtime


class CertificateError(Exception):
    """A certificate/key pair that cannot be used (the message names the files)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """One certificate/key pair as loaded: its context, the DNS names it serves, its notAfter."""

    context: ssl.SSLContext
    names: tuple[str, ...]  # lower case; "*.example.com" for a wildcard
    label: str  # the metric's name label: the first DNS name, else the subject CN, else the file
    not_after: float  # unix time


def parse_pairs(setting: str) -> list[tuple[str, str]]:
    """`CERT:KEY,CERT:KEY` (the tls_certificates setting) -> [(cert path, key path)]."""
    pairs = []
    for item in filter(None, (part.strip() for part in setting.split(","))):
        cert, sep, key = item.rpartition(":")
        if not sep or not cert or not key:
            raise ValueError(f"tls_certificates: expected CERT_PATH:KEY_PATH, got {item!r}")
        pairs.append((cert.strip(), key.strip()))
    return pairs


def file_signature(*paths: str) -> Signature:
    """What changes when a file is replaced, in place or by a symlink swap (missing: all zero)."""
    out = []
    for path in paths:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            out.append((real, 0, 0, 0, 0))
            continue
        out.append((real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _server_context() -> ssl.SSLContext:
    """The listeners' context: no certificate of its own (the SNI callback gives each handshake one)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def load_pair(cert_path: str, key_path: str) -> Loaded:
    """A context serving this pair; CertificateError naming the files when it cannot."""
    try:
        ctx = server_ssl_context(cert_path, key_path)
        with open(cert_path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())  # the first in the chain is the leaf
    except (OSError, ssl.SSLError, ValueError) as err:
        raise CertificateError(f"TLS certificate {cert_path} with key {key_path}: {err}") from err
    names = _dns_names(cert)
    cn = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    label = names[0] if names else (cn[0] if cn else os.path.basename(cert_path))
    return Loaded(ctx, names, label, cert.not_valid_after_utc.timestamp())


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return tuple(name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName))
    # No SAN: the CN is the name (RFC 6125 §6.4.4 lets a server fall back to it).
    return tuple(str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def choose(loaded: list[Loaded], server_name: str | None) -> Loaded:
    """The pair for a client's SNI name: an exact name, else a wildcard of one label (RFC 6125
    §6.4.3), else the first pair (the default, also for clients that send no name)."""
    if server_name:
        name = server_name.lower().rstrip(".")
        wildcard = "*." + name.partition(".")[2]
        for candidate in (name, wildcard):
            for pair in loaded:
                if candidate in pair.names:
                    return pair
    return loaded[0]


class CertificateStore:
    """The certificates of one frontend: the first pair is the default."""

    def __init__(self, pairs: list[tuple[str, str]], interval: float = 0.0) -> None:
        if not pairs:
            raise ValueError("no TLS certificate configured")
        self.pairs = pairs
        self.interval = interval
        # Loaded now, in the caller's thread: a pair that does not load stops the start.
        self.loaded = [load_pair(cert, key) for cert, key in pairs]
        self.signatures = [file_signature(cert, key) for cert, key in pairs]
        self.context = _server_context()
        self.context.sni_callback = self._on_client_hello
        self._watcher: asyncio.Task[None] | None = None

    def _on_client_hello(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # RFC 6066 §3: the server picks its certificate by the name the client asked for.
        sslobj.context = choose(self.loaded, server_name).context

    async def reload(self, force: bool = False) -> int:
        """Load the pairs whose files changed (all of them when forced); returns how many were
        replaced. A pair that fails keeps its previous certificate; the failure is logged once per
        version of its files (the watcher does not repeat it every interval)."""
        replaced = 0
        for i, (cert, key) in enumerate(self.pairs):
            signature = await asyncio.to_thread(file_signature, cert, key)
            if not force and signature == self.signatures[i]:
                continue
            self.signatures[i] = signature
            try:
                self.loaded[i] = await asyncio.to_thread(load_pair, cert, key)
            except CertificateError as err:
                log.error("%s; keeping the certificate loaded before", err)
                continue
            replaced += 1
            log.info("TLS certificate %s reloaded (%s, valid until %s)", cert, self.loaded[i].label,
                     datetime.datetime.fromtimestamp(self.loaded[i].not_after, datetime.UTC).isoformat())  # fmt: skip
        if replaced:
            _export()
        return replaced

    def start(self) -> None:
        """Watch the files (interval > 0) and answer SIGHUP (reload_all)."""
        _STORES.add(self)
        _export()
        if self.interval > 0 and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="tls-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reload()
            except Exception:  # the watcher must outlive any surprise
                log.exception("TLS certificate check failed")

    async def close(self) -> None:
        _STORES.discard(self)
        _export()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None


_STORES: set[CertificateStore] = set()  # the stores of this process's frontends, for SIGHUP
_RELOADS: set[asyncio.Task[int]] = set()  # running SIGHUP reloads (a task needs a reference)


def reload_all() -> None:
    """SIGHUP: reload every frontend's certificates now, whether their files look changed or not."""
    log.info("SIGHUP: reloading TLS certificates")
    for store in list(_STORES):
        task = asyncio.get_running_loop().create_task(store.reload(force=True))
        _RELOADS.add(task)
        task.add_done_callback(_RELOADS.discard)


def _export() -> None:
    """The expiry gauge: one series per certificate the process serves (a renamed one drops out)."""
    TLS_CERT_EXPIRY.clear()
    for store in _STORES:
        for pair in store.loaded:
            TLS_CERT_EXPIRY.labels(name=pair.label).set(pair.not_after)
