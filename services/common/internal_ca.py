"""The internal CA of the gRPC API (ADR 0009): one small CA, one certificate per caller.

A caller's identity is its certificate's name (CN and the one DNS SAN): the mailstore serves
with "mailstore"; smtp, imap, pop3, outbound and admin call it. The embedded default keeps
everything in DATA_DIR/grpc (folder 0700, keys 0600), created on the first start; deployments
issue identities with `mailstack ca` and mount them from Secrets (tls.crt, tls.key, ca.crt, the
names cert-manager writes).
"""

from __future__ import annotations

import datetime
import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mailstack.services.common.tls import key_pem, write_file

SERVER = "mailstore"
ADMIN = "admin"
CALLERS = ("smtp", "imap", "pop3", "outbound", "admin")
IDENTITIES = (SERVER, *CALLERS)
CA_VALIDITY = datetime.timedelta(days=3650)
VALIDITY = datetime.timedelta(days=3650)  # no renewal in the embedded default; deployments rotate (ADR 0009)
FOLDER = "grpc"  # under DATA_DIR


@dataclass(frozen=True)
class IdentityFiles:
    """Where one identity's PEM files are."""

    name: str
    ca: Path
    cert: Path
    key: Path

    def exists(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate, certificate, private key)."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def data_folder(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / FOLDER


def data_identity(data_dir: str | os.PathLike[str], name: str) -> IdentityFiles:
    """An identity of the embedded default: DATA_DIR/grpc/NAME.crt and NAME.key."""
    folder = data_folder(data_dir)
    return IdentityFiles(name, folder / "ca.crt", folder / f"{name}.crt", folder / f"{name}.key")


def create_ca(common_name: str = "mailstack internal CA") -> tuple[bytes, bytes]:
    """(CA certificate PEM, CA key PEM): EC P-256, may sign leaf certificates only (pathlen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def check_name(name: str) -> str:
    """Identity names are short DNS labels (they become a DNS SAN)."""
    if not name or len(name) > 63 or not all(c.isascii() and (c.isalnum() or c == "-") for c in name):
        raise ValueError(f"invalid identity name {name!r}: letters, digits and '-' only")
    return name.lower()


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for identity `name`: CN=name, DNS SAN name, usable as a client
    and as a server (the mailstore's own certificate is one of these)."""
    name = check_name(name)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def private_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def ensure_ca(folder: Path) -> tuple[bytes, bytes]:
    """The CA in `folder` (ca.crt, ca.key), created unless there. The caller holds the lock."""
    cert, key = folder / "ca.crt", folder / "ca.key"
    if cert.exists() and key.exists():
        return cert.read_bytes(), key.read_bytes()
    private_folder(folder)
    cert_pem, key_pem = create_ca()
    write_file(key, key_pem, 0o600)
    write_file(cert, cert_pem, 0o644)
    return cert_pem, key_pem


def ensure_data_identities(data_dir: str | os.PathLike[str], names: Iterable[str] = IDENTITIES) -> Path:
    """The embedded default's CA and identities in DATA_DIR/grpc, each created unless there.

    Several processes may start at once on one data folder: one creates, the others wait."""
    folder = data_folder(data_dir)
    private_folder(folder)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca_cert, ca_key = ensure_ca(folder)
        for name in names:
            files = data_identity(data_dir, name)
            if files.cert.exists() and files.key.exists():
                continue
            cert_pem, key_pem = issue(ca_cert, ca_key, name)
            write_file(files.key, key_pem, 0o600)
            write_file(files.cert, cert_pem, 0o644)
    return folder


def issue_to_folder(ca_folder: Path, name: str, out: Path) -> bool:
    """A deployment's identity: OUT/tls.crt, OUT/tls.key (0600) and OUT/ca.crt, as cert-manager
    names them. False (nothing written) when OUT/tls.crt exists already."""
    ca_cert, ca_key = (ca_folder / "ca.crt").read_bytes(), (ca_folder / "ca.key").read_bytes()
    if (out / "tls.crt").exists():
        return False
    out.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = issue(ca_cert, ca_key, name)
    write_file(out / "tls.key", key_pem, 0o600)
    write_file(out / "ca.crt", ca_cert, 0o644)
    write_file(out / "tls.crt", cert_pem, 0o644)  # last: its presence means the folder is complete
    return True


def certificate_name(cert_pem: bytes) -> str:
    """The identity a certificate carries (its CN)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
