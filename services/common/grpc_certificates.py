"""The Send API's TLS certificate (MAILSTACK_SEND_TLS_CERT), reloaded when its files change.

gRPC asks a fetcher before every TLS handshake whether the certificate changed; this one looks at
the files (resolved path, inode, size, mtime: a Kubernetes Secret swaps a symlink) at most once
per CHECK_EVERY seconds and hands over a new pair only when it loads, so a broken renewal is
logged and the old certificate kept, as for the mail listeners (ADR 0031)."""

from __future__ import annotations

import logging
import threading
import time

import grpc
from mailstack.services.common.certificates import CertificateError, Signature, file_signature, load_pair

log = logging.getLogger("mailstack.tls")
CHECK_EVERY = 1.0  # seconds between looks at the files (a handshake costs more than two stat calls)


class ReloadingServerCertificate:
    """A certificate/key pair for a gRPC server, read again when the files change."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path, self.key_path = cert_path, key_path
        self._lock = threading.Lock()  # gRPC calls the fetcher from its own threads
        self._checked = time.monotonic()
        self._signature: Signature = file_signature(cert_path, key_path)
        self.initial = self._configuration()  # raises at start: nothing to keep yet

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        load_pair(self.cert_path, self.key_path)  # CertificateError when the pair does not match
        with open(self.cert_path, "rb") as cert, open(self.key_path, "rb") as key:
            return grpc.ssl_server_certificate_configuration([(key.read(), cert.read())])

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's question before a handshake: a new configuration, or None to keep the current."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked < CHECK_EVERY:
                return None
            self._checked = now
            signature = file_signature(self.cert_path, self.key_path)
            if signature == self._signature:
                return None
            self._signature = signature
            try:
                configuration = self._configuration()
            except (CertificateError, OSError) as err:
                log.error("%s; keeping the certificate loaded before", err)
                return None
            log.info("TLS certificate %s reloaded (Send API)", self.cert_path)
            return configuration

    def credentials(self) -> grpc.ServerCredentials:
        # The stubs type the fetcher without None, which grpc documents as "no change".
        return grpc.dynamic_ssl_server_credentials(self.initial, self.fetch)  # type: ignore[arg-type]
