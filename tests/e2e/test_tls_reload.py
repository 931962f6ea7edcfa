"""TLS certificates as an operator renews them (issue 17): `mailstack serve` in its own process, its
certificate mounted the way Kubernetes mounts a Secret (files behind a `..data` symlink that a
renewal swaps), real TLS clients (Python's ssl, smtplib STARTTLS, openssl s_client).

- SIGHUP: new handshakes on every TLS port (implicit and STARTTLS) get the new certificate; a
  session opened before keeps working; the process does not die of the signal.
- No signal: the file watcher notices the swap within its interval.
- A broken new pair (key of another certificate) is logged and the working one kept.
- SNI: a certificate per name, wildcards of one label, the default for other names and for
  clients that send none (RFC 6066 §3, RFC 6125 §6.4.3).
- The expiry gauge the k8s alert uses: mailstack_tls_certificate_expiry_timestamp_seconds{name}.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mailstack.services.common.tls import key_pem

from tests.fixtures.serve_process import Served, running_serve

pytestmark = pytest.mark.slow
WAIT = 15.0


class Cert:
    """A self-signed certificate for some DNS names, its key, and its DER form (what a client sees)."""

    def __init__(self, *names: str, days: int = 30) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.der = cert.public_bytes(serialization.Encoding.DER)
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = key_pem(self.key)
        self.not_after = cert.not_valid_after_utc.timestamp()

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tls.crt").write_bytes(self.pem)
        (folder / "tls.key").write_bytes(self.key_pem)
        return folder / "tls.crt", folder / "tls.key"


def publish(secret: Path, version: str, cert_pem: bytes, key: bytes) -> None:
    """What the kubelet does when a Secret changes: a new `..VERSION` folder, then an atomic swap of
    the `..data` symlink; tls.crt and tls.key are symlinks through `..data` and never change."""
    folder = secret / f"..{version}"
    folder.mkdir(parents=True)
    (folder / "tls.crt").write_bytes(cert_pem)
    (folder / "tls.key").write_bytes(key)
    tmp = secret / "..data_tmp"
    os.symlink(folder.name, tmp)
    os.replace(tmp, secret / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (secret / name).is_symlink():
            os.symlink(f"..data/{name}", secret / name)


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test compares the certificate itself
    return ctx


def open_tls(port: int, server_name: str | None = None) -> tuple[ssl.SSLSocket, bytes]:
    """An implicit-TLS session (IMAPS, POP3S, submissions) and the certificate it got."""
    sock = client_context().wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=server_name
    )
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return sock, der


def implicit_cert(port: int, server_name: str | None = None) -> bytes:
    sock, der = open_tls(port, server_name)
    sock.close()
    return der


def smtp_starttls_cert(port: int) -> bytes:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        tls = smtp.sock
        assert isinstance(tls, ssl.SSLSocket)
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def line_starttls_cert(port: int, command: bytes) -> bytes:
    """IMAP STARTTLS / POP3 STLS: greeting, the command, its OK, then the handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(command)
        assert reader.readline().startswith((b"a OK", b"+OK"))
        with client_context().wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


def every_port(served: Served) -> dict[str, bytes]:
    p = served.ports
    return {
        "imaps": implicit_cert(p["imaps"]),
        "pop3s": implicit_cert(p["pop3s"]),
        "submissions": implicit_cert(p["submissions"]),
        "submission STARTTLS": smtp_starttls_cert(p["submission"]),
        "smtp STARTTLS": smtp_starttls_cert(p["smtp"]),
        "imap STARTTLS": line_starttls_cert(p["imap"], b"a STARTTLS\r\n"),
        "pop3 STLS": line_starttls_cert(p["pop3"], b"STLS\r\n"),
    }


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.2)


def imap_still_works(session: ssl.SSLSocket) -> None:
    """A command on an IMAPS session opened before the reload gets its tagged OK."""
    reader = session.makefile("rb")
    session.sendall(b"t1 CAPABILITY\r\n")
    lines = [reader.readline() for _ in range(2)]
    assert lines[0].startswith(b"* CAPABILITY") and lines[1].startswith(b"t1 OK"), lines


def expiry_series(served: Served) -> dict[str, float]:
    pattern = r'^mailstack_tls_certificate_expiry_timestamp_seconds\{name="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, served.metrics(), re.M)}


def tls_settings(secret: Path, interval: int) -> dict[str, str]:
    return {
        "MAILSTACK_TLS_CERT": str(secret / "tls.crt"),
        "MAILSTACK_TLS_KEY": str(secret / "tls.key"),
        "MAILSTACK_TLS_RELOAD_INTERVAL": str(interval),
    }


def test_sighup_reloads_for_new_handshakes_and_keeps_sessions(tmp_path: Path) -> None:
    a, b, other = Cert("mail.a.test"), Cert("mail.b.test"), Cert("mail.c.test")
    secret = tmp_path / "secret"
    publish(secret, "1", a.pem, a.key_pem)
    with running_serve(tmp_path, tls_settings(secret, interval=0)) as served:  # 0: SIGHUP only
        assert set(every_port(served).values()) == {a.der}
        assert expiry_series(served) == {"mail.a.test": pytest.approx(a.not_after)}
        before, der = open_tls(served.ports["imaps"])
        assert der == a.der
        before.makefile("rb").readline()  # the greeting
        submission = smtplib.SMTP("127.0.0.1", served.ports["submission"], timeout=10)
        submission.starttls(context=client_context())

        publish(secret, "2", b.pem, b.key_pem)
        time.sleep(1.5)
        assert implicit_cert(served.ports["imaps"]) == a.der  # without a signal or watcher nothing changes
        served.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: implicit_cert(served.ports["imaps"]) == b.der, "IMAPS serves the new certificate")
        assert served.proc.poll() is None  # SIGHUP's default action would have ended the process
        assert set(every_port(served).values()) == {b.der}
        imap_still_works(before)
        assert submission.noop()[0] == 250
        assert expiry_series(served) == {"mail.b.test": pytest.approx(b.not_after)}

        # A renewal gone wrong: the certificate of one pair, the key of another. Kept: the working one.
        publish(secret, "3", other.pem, a.key_pem)
        served.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the certificate loaded before" in served.log(), "the broken pair is logged")
        assert served.proc.poll() is None
        assert set(every_port(served).values()) == {b.der}
        imap_still_works(before)
        assert expiry_series(served) == {"mail.b.test": pytest.approx(b.not_after)}
        before.close()
        submission.quit()
    assert re.search(r"TLS certificate \S+ with key \S+: .*keeping the certificate loaded before", served.log())


def test_a_swapped_secret_is_picked_up_without_a_signal(tmp_path: Path) -> None:
    a, b = Cert("mail.a.test"), Cert("mail.b.test", days=90)
    secret = tmp_path / "secret"
    publish(secret, "1", a.pem, a.key_pem)
    with running_serve(tmp_path, tls_settings(secret, interval=1)) as served:
        before, der = open_tls(served.ports["pop3s"])
        assert der == a.der
        reader = before.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        publish(secret, "2", b.pem, b.key_pem)
        wait_for(lambda: implicit_cert(served.ports["pop3s"]) == b.der, "POP3S serves the renewed certificate")
        assert set(every_port(served).values()) == {b.der}
        before.sendall(b"CAPA\r\n")  # the session from before the renewal still answers
        assert reader.readline().startswith(b"+OK")
        assert expiry_series(served) == {"mail.b.test": pytest.approx(b.not_after)}
        before.close()


def s_client_subject(port: int, server_name: str) -> str:
    """The subject of the certificate openssl s_client is given for a server name."""
    shown = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name],
        input=b"", capture_output=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=shown, capture_output=True, check=True)
    return subject.stdout.decode()


def test_sni_picks_the_certificate_for_the_name(tmp_path: Path) -> None:
    default, wildcard, exact = Cert("mail.a.test"), Cert("*.other.test"), Cert("mx.third.test", "smtp.third.test")
    pairs = [wildcard.write(tmp_path / "wildcard"), exact.write(tmp_path / "exact")]
    settings = {
        **default_files(default, tmp_path / "default"),
        "MAILSTACK_TLS_CERTIFICATES": ",".join(f"{cert}:{key}" for cert, key in pairs),
    }
    with running_serve(tmp_path, settings) as served:
        for port in (served.ports["imaps"], served.ports["submissions"], served.ports["pop3s"]):
            assert implicit_cert(port, "x.other.test") == wildcard.der
            assert implicit_cert(port, "MX.Third.Test") == exact.der  # DNS names are case-insensitive
            assert implicit_cert(port, "smtp.third.test") == exact.der
            assert implicit_cert(port, "mail.a.test") == default.der
            assert implicit_cert(port, "unknown.test") == default.der
            assert implicit_cert(port, "a.b.other.test") == default.der  # a wildcard covers one label
            assert implicit_cert(port, "other.test") == default.der
            assert implicit_cert(port, None) == default.der  # no SNI at all
        assert "CN = *.other.test" in s_client_subject(served.ports["imaps"], "www.other.test")
        assert "CN = mx.third.test" in s_client_subject(served.ports["pop3s"], "mx.third.test")
        assert expiry_series(served).keys() == {"mail.a.test", "*.other.test", "mx.third.test"}


def default_files(cert: Cert, folder: Path) -> dict[str, str]:
    cert_path, key_path = cert.write(folder)
    return {"MAILSTACK_TLS_CERT": str(cert_path), "MAILSTACK_TLS_KEY": str(key_path)}


def send_api_cert(port: int) -> bytes:
    """The certificate of a TLS handshake on the Send API port, as a gRPC client makes it (ALPN h2)."""
    ctx = client_context()
    ctx.set_alpn_protocols(["h2"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_the_send_api_certificate_is_reloaded_too(tmp_path: Path) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    a, b, other = Cert("send.a.test"), Cert("send.b.test"), Cert("send.c.test")
    secret = tmp_path / "send-secret"
    publish(secret, "1", a.pem, a.key_pem)
    files = {"MAILSTACK_SEND_TLS_CERT": str(secret / "tls.crt"), "MAILSTACK_SEND_TLS_KEY": str(secret / "tls.key")}
    with running_serve(tmp_path, files) as served:
        port = served.ports["send"]
        assert send_api_cert(port) == a.der
        publish(secret, "2", b.pem, b.key_pem)
        wait_for(lambda: send_api_cert(port) == b.der, "the Send API serves the renewed certificate")
        credentials = grpc.ssl_channel_credentials(root_certificates=b.pem)
        options = [("grpc.ssl_target_name_override", "send.b.test")]
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        publish(secret, "3", other.pem, a.key_pem)  # a broken renewal, noticed at the next handshake
        wait_for(
            lambda: send_api_cert(port) == b.der and "keeping the certificate loaded before" in served.log(),
            "the broken pair is logged, the working one kept",
        )
        assert send_api_cert(port) == b.der
