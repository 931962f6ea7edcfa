"""Self-signed certificate on first start, and the SSL contexts, checked with a real TLS handshake."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mailstack.services.common.tls import client_ssl_context, ensure_self_signed, server_ssl_context


def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data" / "tls" / "cert.pem", tmp_path / "data" / "tls" / "key.pem"


def test_generates_certificate_with_sans_and_private_key(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_self_signed(cert_path, key_path, "mail.example.test")

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "mail.example.test"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "mail.example.test"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert lifetime > datetime.timedelta(days=9 * 365)

    assert key_path.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*public) == cert.public_key().public_bytes(*public)


def test_localhost_hostname_is_listed_once(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_self_signed(cert_path, key_path, "localhost")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_existing_files_are_kept(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_self_signed(cert_path, key_path, "localhost")
    before = cert_path.read_bytes(), key_path.read_bytes()
    ensure_self_signed(cert_path, key_path, "other.example.test")
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_a_missing_half_regenerates_both(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_self_signed(cert_path, key_path, "localhost")
    old_key = key_path.read_bytes()
    cert_path.unlink()
    ensure_self_signed(cert_path, key_path, "localhost")
    assert key_path.read_bytes() != old_key
    assert cert_path.exists()


def test_concurrent_first_starts_agree_on_one_pair(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    threads = [threading.Thread(target=ensure_self_signed, args=(cert_path, key_path, "localhost")) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    server_ssl_context(cert_path, key_path)  # raises if key and certificate do not match
    assert sorted(p.name for p in cert_path.parent.iterdir() if not p.name.startswith(".")) == ["cert.pem", "key.pem"]


async def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> bytes:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname
        )
        writer.write(b"hello\r\n")
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        await writer.wait_closed()
        return line
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", "mail.example.test"])
async def test_clients_trusting_the_certificate_complete_a_handshake(tmp_path: Path, server_hostname: str) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_self_signed(cert_path, key_path, "mail.example.test")
    client = client_ssl_context(cert_path)
    client.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13 clients do by default
    assert await handshake(server_ssl_context(cert_path, key_path), client, server_hostname) == b"hello\r\n"


async def test_wrong_hostname_is_refused(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_self_signed(cert_path, key_path, "mail.example.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(server_ssl_context(cert_path, key_path), client_ssl_context(cert_path), "evil.example.test")


def test_contexts_require_tls_1_2(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_self_signed(cert_path, key_path, "localhost")
    assert server_ssl_context(cert_path, key_path).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_ssl_context(cert_path).minimum_version == ssl.TLSVersion.TLSv1_2
