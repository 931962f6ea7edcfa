"""Settings: defaults, then an optional TOML file, then MAILSTACK_* environment variables.

Each field's metadata names its environment variable and whether it is secret;
`mailstack config` prints the effective settings with secrets masked, and the
README's settings table is generated from the same fields.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MiB = 1024 * 1024


def _setting(default: Any, help: str, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # storage (the mailstore)
    data_dir: str = _setting("./mailstack-data", "Folder for the embedded default (SQLite, blobs, TLS).")
    metadata_url: str = _setting(
        "", "Metadata store URL: sqlite://PATH (default DATA_DIR/metadata.sqlite3) or postgresql://USER@HOST/DB."
    )
    blob_url: str = _setting("", "Blob store URL (file://PATH or s3://BUCKET/PREFIX); default file://DATA_DIR/blobs.")
    events_url: str = _setting("memory://", "Event bus URL: memory:// (one process) or redis://HOST:PORT/DB.")
    quota_url: str = _setting("", "Quota counters: empty = inside the metadata transaction, or redis://...")
    s3_endpoint: str = _setting("", "S3 endpoint URL for S3-compatible servers (else AWS_ENDPOINT_URL / AWS).")
    s3_region: str = _setting("", "S3 region (else AWS_REGION / AWS_DEFAULT_REGION).")
    s3_path_style: bool = _setting(True, "Path-style S3 addressing (needed by most S3-compatible servers).")
    blob_cache_bytes: int = _setting(
        64 * MiB, "Memory for recently stored and read message bodies in front of S3 (0 = off; not used for files)."
    )
    max_message_size: int = _setting(50 * MiB, "Largest message accepted, in bytes.")
    default_quota_bytes: int = _setting(0, "Quota in bytes for new accounts (0 = unlimited).")
    default_quota_messages: int = _setting(0, "Message-count quota for new accounts (0 = unlimited).")
    password_scrypt_log_n: int = _setting(
        14, "scrypt cost of new password hashes, log2(N) in 10..20 (14: ~40 ms; existing hashes keep theirs)."
    )
    orphan_sweep_seconds: int = _setting(3600, "How often the sweeper removes unreferenced blobs (0 = never).")
    orphan_min_age_seconds: int = _setting(3600, "Blobs younger than this are never swept (deliveries in flight).")
    change_log_days: int = _setting(
        90,
        "Days the log of expunges is kept for IMAP QRESYNC (pruned with the orphan sweep; 0 = forever). "
        "A client last synced before that gets VANISHED for every UID it may hold that is gone.",
    )

    # gRPC
    mailstore_listen: str = _setting("127.0.0.1:50051", "Where the mailstore's gRPC server listens.")
    mailstore_addr: str = _setting(
        "127.0.0.1:50051",
        "The mailstore address the frontends and the CLI call; replicas: dns:///NAME:PORT or HOST:PORT,HOST:PORT.",
    )
    # Internal API identities (ADR 0009): mTLS with a small CA; empty = DATA_DIR/grpc, made on first start.
    grpc_ca: str = _setting("", "CA certificate of the internal gRPC API (PEM); default DATA_DIR/grpc/ca.crt.")
    grpc_cert: str = _setting(
        "", "This process's gRPC identity certificate (mailstore: its server cert; a frontend: smtp, imap...)."
    )
    grpc_key: str = _setting("", "The key of MAILSTACK_GRPC_CERT.", secret=True)
    grpc_admin_cert: str = _setting("", "Admin identity the CLI calls with (else DATA_DIR/grpc, else GRPC_CERT).")
    grpc_admin_key: str = _setting("", "The key of MAILSTACK_GRPC_ADMIN_CERT.", secret=True)
    grpc_reflection: bool = _setting(False, "Serve gRPC reflection on the internal port (admin identity only).")
    send_listen: str = _setting(
        "127.0.0.1:50052", "Where the Send API (Sender service, bearer tokens) listens; 0.0.0.0:50052 in containers."
    )
    send_tls_cert: str = _setting("", "PEM certificate for TLS on the Send API port (empty: plaintext).")
    send_tls_key: str = _setting("", "The key of MAILSTACK_SEND_TLS_CERT.", secret=True)

    # frontends
    hostname: str = _setting("localhost", "This server's name in greetings and Received: headers.")
    login_domain: str = _setting(
        "", "Domain added to a login without '@' (empty: the only served domain, if there is exactly one)."
    )
    bind: str = _setting("127.0.0.1", "Address the mail listeners bind (0.0.0.0 in containers).")
    reuse_port: bool = _setting(
        False, "Several processes of a frontend may share its ports (SO_REUSEPORT; the kernel spreads clients)."
    )
    smtp_port: int = _setting(2525, "Inbound SMTP (MX) port; 25 in containers.")
    submission_port: int = _setting(2587, "Submission port (STARTTLS + AUTH); 587 in containers.")
    submissions_port: int = _setting(2465, "Submission over implicit TLS; 465 in containers.")
    imap_port: int = _setting(1143, "IMAP port (STARTTLS); 143 in containers.")
    imaps_port: int = _setting(1993, "IMAP over implicit TLS; 993 in containers.")
    pop3_port: int = _setting(1110, "POP3 port (STLS); 110 in containers.")
    pop3s_port: int = _setting(1995, "POP3 over implicit TLS; 995 in containers.")
    tls_cert: str = _setting("", "PEM certificate; default DATA_DIR/tls/cert.pem, self-signed on first start.")
    tls_key: str = _setting("", "PEM private key; default DATA_DIR/tls/key.pem.", secret=True)
    allow_plaintext_auth: bool = _setting(False, "Allow LOGIN/AUTH before TLS (tests only).")

    # operation
    log_level: str = _setting("INFO", "Log level.")
    log_format: str = _setting("text", "Log format: text or json.")
    metrics_port: int = _setting(0, "Prometheus /metrics port (0 = off).")

    # smtp
    smtp_max_recipients: int = _setting(100, "Most RCPT TO per SMTP transaction (more: 452 4.5.3).")
    smtp_max_connections: int = _setting(1000, "Most SMTP connections at once, all ports together (more: 421 4.7.0).")
    smtp_max_connections_per_ip: int = _setting(50, "Most SMTP connections at once from one client IP (more: 421).")
    smtp_command_timeout: int = _setting(300, "Seconds an SMTP client may idle between commands (RFC 5321 4.5.3.2.7).")
    smtp_data_timeout: int = _setting(180, "Seconds an SMTP client may pause inside DATA (RFC 5321 4.5.3.2.5).")
    smtp_auth_failure_delay_ms: int = _setting(1000, "Delay before answering a failed SMTP AUTH, in ms.")
    smtp_inflight_bytes: int = _setting(
        256 * MiB,
        "Message content all SMTP sessions of a process may hold at once, in bytes (0 = unbounded); "
        "beyond it a transaction is answered 452 4.3.1. Keep it at least max_message_size.",
    )

    # pop3
    pop3_idle_timeout: int = _setting(600, "POP3 inactivity autologout in seconds (RFC 1939 §3: at least 600).")
    pop3_lease_ttl: int = _setting(60, "POP3 maildrop lock lease in seconds; renewed every third of it.")
    pop3_max_auth_failures: int = _setting(3, "Failed POP3 logins before the connection is closed.")
    pop3_auth_failure_delay_ms: int = _setting(1000, "Delay before answering a failed POP3 login, in ms.")
    pop3_max_connections: int = _setting(10000, "Most POP3 connections at once, both ports together (more: -ERR).")
    pop3_max_connections_per_ip: int = _setting(50, "Most POP3 connections at once from one client IP (more: -ERR).")
    pop3_read_ahead_bytes: int = _setting(
        64 * 1024 * 1024, "Message bytes all POP3 sessions of a process may fetch ahead of RETR (4 MiB each; 0 = off)."
    )

    # imap
    imap_max_connections: int = _setting(10000, "Most IMAP connections at once, all ports together.")
    imap_max_connections_per_ip: int = _setting(200, "Most IMAP connections at once from one client IP.")
    imap_max_connections_per_user: int = _setting(50, "Most IMAP sessions at once of one account.")
    imap_preauth_timeout: int = _setting(60, "Seconds an IMAP client may stay unauthenticated between commands.")
    imap_autologout: int = _setting(1800, "IMAP inactivity autologout after login, seconds (RFC 9051 5.4: >= 1800).")
    imap_idle_keepalive: int = _setting(120, "Seconds between '* OK Still here' while a client IDLEs.")
    imap_poll_interval: int = _setting(30, "Seconds between change polls of an IDLE session (push may be lost).")
    imap_max_line: int = _setting(65536, "Longest IMAP command line in bytes (longer: BAD).")
    imap_commands_per_second: int = _setting(500, "Sustained IMAP commands per second per connection (burst 5x).")
    imap_read_ahead_bytes: int = _setting(
        64 * 1024 * 1024,
        "Message bytes all IMAP sessions of a process may fetch ahead of FETCH BODY[] of consecutive messages "
        "(1 MiB each; 0 = off).",
    )
    imap_auth_max_failures: int = _setting(3, "Failed IMAP logins per connection before it is closed.")
    imap_auth_failure_delay_ms: int = _setting(1000, "Delay before answering a failed IMAP login, in ms.")

    # password guessing, all protocols and the Send API together (ADR 0011)
    auth_max_attempts_per_ip: int = _setting(
        20, "Failed plus in-progress logins per client IP per window, all protocols together (more: refused; 0 = off)."
    )
    auth_max_attempts_per_account: int = _setting(
        100, "Failed plus in-progress logins at one account per window, from all IPs (more: refused; 0 = off)."
    )
    auth_failure_window: int = _setting(300, "Seconds a failed login counts against its IP and its account.")

    # proxy protocol (ADR 0007)
    proxy_protocol: bool = _setting(False, "Expect a PROXY header (v1/v2) from trusted networks on every mail port.")
    proxy_trusted_networks: str = _setting(
        "127.0.0.1/32,::1/128", "Comma-separated CIDRs of load balancers that must send a PROXY header."
    )
    proxy_header_timeout: int = _setting(5, "Seconds a trusted peer has to send its PROXY header.")

    # outbound (ADR 0008)
    outbound_resolver: str = _setting(
        "dns", "How the worker finds MX hosts: dns, or static:DOMAIN=HOST:PORT,... ('*' = any domain; tests)."
    )
    outbound_smarthost: str = _setting("", "Relay all outbound mail through HOST:PORT (TLS required; 465 = implicit).")
    outbound_smarthost_user: str = _setting("", "AUTH user for the smarthost (empty = no AUTH).")
    outbound_smarthost_password: str = _setting("", "AUTH password for the smarthost.", secret=True)
    outbound_retry_schedule: str = _setting(
        "300,900,1800,3600,7200,14400", "Seconds before each retry (the last repeats), comma-separated."
    )
    outbound_max_lifetime: int = _setting(5 * 86400, "Seconds a message may stay queued before it bounces.")
    outbound_lease_seconds: int = _setting(600, "A worker's lease on a message; a dead worker's lease expires.")
    outbound_concurrency: int = _setting(16, "Messages one outbound worker delivers at once.")
    outbound_poll_ms: int = _setting(1000, "Milliseconds between queue polls of an idle outbound worker.")
    outbound_connect_timeout: int = _setting(30, "Seconds to connect to a remote MX and for each SMTP reply.")
    outbound_helo_name: str = _setting("", "EHLO name of the outbound worker (default: hostname).")
    dkim_keys: str = _setting("", "DKIM signing keys: DOMAIN=SELECTOR:/path/key.pem,... (mount from a Secret).")
    save_sent_copies: bool = _setting(False, "Save a copy of submitted/sent mail in the sender's Sent mailbox.")
    submission_from_check: str = _setting(
        "strict",
        "SMTP submission: strict = envelope sender and header From/Sender must be the login's address or alias; "
        "envelope = the envelope sender only; off = neither.",
    )
    submission_rate_messages: int = _setting(
        200, "Messages one account may submit per sending_rate_window (0 = no limit)."
    )
    submission_rate_recipients: int = _setting(
        1000, "Recipients one account may submit to per sending_rate_window (0 = no limit)."
    )
    send_rate_messages: int = _setting(
        1000, "Messages one Send API token may send per sending_rate_window (0 = no limit)."
    )
    send_rate_recipients: int = _setting(
        5000, "Recipients one Send API token may send to per sending_rate_window (0 = no limit)."
    )
    sending_rate_window: int = _setting(3600, "Seconds over which the sending limits count (sliding window).")

    @property
    def effective_metadata_url(self) -> str:
        return self.metadata_url or f"sqlite://{Path(self.data_dir).resolve() / 'metadata.sqlite3'}"

    @property
    def effective_blob_url(self) -> str:
        return self.blob_url or f"file://{Path(self.data_dir).resolve() / 'blobs'}"

    @property
    def effective_tls_cert(self) -> str:
        return self.tls_cert or str(Path(self.data_dir) / "tls" / "cert.pem")

    @property
    def effective_tls_key(self) -> str:
        return self.tls_key or str(Path(self.data_dir) / "tls" / "key.pem")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def env_name(field_name: str) -> str:
    return "MAILSTACK_" + field_name.upper()


def _convert(raw: Any, kind: type | str, name: str) -> Any:
    kind_name = kind if isinstance(kind, str) else kind.__name__
    if kind_name == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if kind_name == "int":
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    return str(raw)


def file_settings(data: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A TOML file's settings by field name. A table is a service's section: `[smtp] port = 25` is
    smtp_port, as the flat key `smtp_port = 25` (and MAILSTACK_SMTP_PORT) is."""
    known = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in data.items():
        items = [(f"{key}_{k}", f"{key}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else []
        for name, shown, item in items or [(key, key, value)]:
            if name not in known or isinstance(item, dict):
                unknown.append(shown)
            elif name in values:
                raise ValueError(f"{path}: {shown} is set twice (in its section and as {name})")
            else:
                values[name] = item
    if unknown:
        raise ValueError(f"{path}: unknown settings: {', '.join(sorted(unknown))}")
    return values


def load_settings(env: Mapping[str, str] | None = None, config_file: str | None = None) -> Settings:
    """Defaults < TOML file (MAILSTACK_CONFIG or config_file) < MAILSTACK_* variables."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get("MAILSTACK_CONFIG")
    if path:
        with open(path, "rb") as fh:
            values.update(file_settings(tomllib.load(fh), path))
    for f in dataclasses.fields(Settings):
        name = env_name(f.name)
        if name in env:
            values[f.name] = env[name]
    converted = {
        k: _convert(v, next(f.type for f in dataclasses.fields(Settings) if f.name == k), k) for k, v in values.items()
    }
    return Settings(**converted)


def mask_url(url: str) -> str:
    """Hide a password in a URL (redis://:secret@host -> redis://:***@host)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rsplit("@", 1)
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    return url


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(environment variable, effective value with secrets masked, help) for every setting."""
    rows = []
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if f.metadata.get("secret") and value:
            shown = "***"
        elif isinstance(value, str):
            shown = mask_url(value)
        else:
            shown = str(value)
        rows.append((env_name(f.name), shown, f.metadata.get("help", "")))
    return rows
