"""Settings: defaults, then an optional TOML file, then MAILSTACK_* environment variables.

Each field's metadata names its environment variable and whether it is secret;
`mailstack config` prints the effective settings with secrets masked, and the
README's settings table is generated from the same fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import ssl
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mailstack.services.common.setting_rules import (
    AT_LEAST_0,
    AT_LEAST_1,
    BIND_HOST,
    CIDR_LIST,
    DIAL,
    DKIM_KEYS,
    DOMAIN_OR_EMPTY,
    FILE_OR_EMPTY,
    HOST_PORT_OR_EMPTY,
    HOSTNAME,
    LISTEN,
    NOT_EMPTY,
    PORT,
    RESOLVER,
    SECONDS_LIST,
    WORKERS,
    Rule,
    between,
    one_of,
    rule_for,
    url,
)

KiB = 1024
MiB = 1024 * KiB


FRONTENDS = ("smtp", "imap", "pop3")


def _setting(
    default: Any, help: str, secret: bool = False, rule: Rule | None = None, used_by: tuple[str, ...] = ()
) -> Any:
    """A setting: its default, its help, whether it is secret, the rule its values follow
    (setting_rules.py; a whole number without one must be >= 0), and the services that read it when
    not all do ("admin": the CLI's admin commands): a file only they read is checked only for them
    (a ConfigMap shared by every workload names the mail certificate, mounted only where it is used)."""
    rule = rule or rule_for(default)
    return field(default=default, metadata={"help": help, "secret": secret, "rule": rule, "used_by": used_by})


@dataclass(frozen=True)
class Settings:
    # storage (the mailstore)
    data_dir: str = _setting(
        "./mailstack-data", "Folder for the embedded default (SQLite, blobs, TLS).", rule=NOT_EMPTY
    )
    metadata_url: str = _setting(
        "",
        "Metadata store URL: sqlite://PATH (default DATA_DIR/metadata.sqlite3) or postgresql://USER@HOST/DB.",
        rule=url("sqlite", "postgresql", "postgres", empty_ok=True),
    )
    blob_url: str = _setting(
        "",
        "Blob store URL (file://PATH or s3://BUCKET/PREFIX); default file://DATA_DIR/blobs.",
        rule=url("file", "s3", "memory", empty_ok=True),
    )
    events_url: str = _setting(
        "memory://",
        "Event bus URL: memory:// (one process) or redis://HOST:PORT/DB.",
        rule=url("memory", "redis", "rediss", "unix"),
    )
    quota_url: str = _setting(
        "",
        "Quota counters: empty = inside the metadata transaction, or redis://...",
        rule=url("sql", "redis", "rediss", "unix", empty_ok=True),
    )
    s3_endpoint: str = _setting(
        "",
        "S3 endpoint URL for S3-compatible servers (else AWS_ENDPOINT_URL / AWS).",
        rule=url("http", "https", empty_ok=True),
    )
    s3_region: str = _setting("", "S3 region (else AWS_REGION / AWS_DEFAULT_REGION).")
    s3_path_style: bool = _setting(True, "Path-style S3 addressing (needed by most S3-compatible servers).")
    s3_client: str = _setting(
        "lean",
        "S3 client for blob put/get/delete: lean (ours, less CPU per call; ADR 0042) or boto3.",
        rule=one_of("lean", "boto3"),
    )
    blob_cache_bytes: int = _setting(
        64 * MiB, "Memory for recently stored and read message bodies in front of S3 (0 = off; not used for files)."
    )
    kept_body_bytes: int = _setting(
        64 * KiB,
        "Bodies up to this size are kept in the SQLite metadata database with their message, one fsync"
        " fewer per delivery (0 = every body in the blob folder; not used with S3 or PostgreSQL).",
        rule=between(0, MiB),
    )
    max_message_size: int = _setting(50 * MiB, "Largest message accepted, in bytes.", rule=AT_LEAST_1)
    default_quota_bytes: int = _setting(0, "Quota in bytes for new accounts (0 = unlimited).")
    default_quota_messages: int = _setting(0, "Message-count quota for new accounts (0 = unlimited).")
    password_scrypt_log_n: int = _setting(
        14,
        "scrypt cost of new password hashes, log2(N) in 10..20 (14: ~40 ms; existing hashes keep theirs).",
        rule=between(10, 20),
    )
    master_users: str = _setting(
        "",
        "Accounts that may log in as any other (migrations, support): 'user*master' logins and SASL PLAIN "
        "authzid; comma-separated; empty = off. Every use is logged.",
    )
    master_user_separator: str = _setting("*", "Separates the user from the master in a 'user*master' login.")
    session_report_seconds: int = _setting(
        5, "How often IMAP and POP3 report their sessions (mailstack who); a kick takes effect within this (0 = off)."
    )
    orphan_sweep_seconds: int = _setting(3600, "How often the sweeper removes unreferenced blobs (0 = never).")
    orphan_min_age_seconds: int = _setting(3600, "Blobs younger than this are never swept (deliveries in flight).")
    change_log_days: int = _setting(
        90,
        "Days the log of expunges is kept for IMAP QRESYNC (pruned with the orphan sweep; 0 = forever). "
        "A client last synced before that gets VANISHED for every UID it may hold that is gone.",
    )

    # gRPC
    mailstore_listen: str = _setting("127.0.0.1:50051", "Where the mailstore's gRPC server listens.", rule=LISTEN)
    mailstore_addr: str = _setting(
        "127.0.0.1:50051",
        "The mailstore address the frontends and the CLI call; replicas: dns:///NAME:PORT or HOST:PORT,HOST:PORT.",
        rule=DIAL,
    )
    mailstore_transport: str = _setting(
        "auto",
        "How frontends call a mailstore running in their own process (mailstack serve): auto = in-process, "
        "no gRPC (ADR 0039); grpc = over its gRPC listener, as separate processes do.",
        rule=one_of("auto", "grpc"),
        used_by=FRONTENDS,
    )
    # Internal API identities (ADR 0009): mTLS with a small CA; empty = DATA_DIR/grpc, made on first start.
    grpc_ca: str = _setting(
        "", "CA certificate of the internal gRPC API (PEM); default DATA_DIR/grpc/ca.crt.", rule=FILE_OR_EMPTY
    )
    grpc_cert: str = _setting(
        "",
        "This process's gRPC identity certificate (mailstore: its server cert; a frontend: smtp, imap...).",
        rule=FILE_OR_EMPTY,
    )
    grpc_key: str = _setting("", "The key of MAILSTACK_GRPC_CERT.", secret=True, rule=FILE_OR_EMPTY)
    grpc_admin_cert: str = _setting(
        "",
        "Admin identity the CLI calls with (else DATA_DIR/grpc, else GRPC_CERT).",
        rule=FILE_OR_EMPTY,
        used_by=("admin",),
    )
    grpc_admin_key: str = _setting(
        "", "The key of MAILSTACK_GRPC_ADMIN_CERT.", secret=True, rule=FILE_OR_EMPTY, used_by=("admin",)
    )
    grpc_reflection: bool = _setting(False, "Serve gRPC reflection on the internal port (admin identity only).")
    send_listen: str = _setting(
        "127.0.0.1:50052",
        "Where the Send API (Sender service, bearer tokens) listens; 0.0.0.0:50052 in containers.",
        rule=LISTEN,
    )
    send_tls_cert: str = _setting(
        "",
        "PEM certificate for TLS on the Send API port (empty: plaintext).",
        rule=FILE_OR_EMPTY,
        used_by=("mailstore",),
    )
    send_tls_key: str = _setting(
        "", "The key of MAILSTACK_SEND_TLS_CERT.", secret=True, rule=FILE_OR_EMPTY, used_by=("mailstore",)
    )

    # frontends
    hostname: str = _setting("localhost", "This server's name in greetings and Received: headers.", rule=HOSTNAME)
    login_domain: str = _setting(
        "",
        "Domain added to a login without '@' (empty: the only served domain, if there is exactly one).",
        rule=DOMAIN_OR_EMPTY,
    )
    bind: str = _setting("127.0.0.1", "Address the mail listeners bind (0.0.0.0 in containers).", rule=BIND_HOST)
    reuse_port: bool = _setting(
        False, "Several processes of a frontend may share its ports (SO_REUSEPORT; the kernel spreads clients)."
    )
    smtp_port: int = _setting(2525, "Inbound SMTP (MX) port; 25 in containers.", rule=PORT)
    submission_port: int = _setting(2587, "Submission port (STARTTLS + AUTH); 587 in containers.", rule=PORT)
    submissions_port: int = _setting(2465, "Submission over implicit TLS; 465 in containers.", rule=PORT)
    imap_port: int = _setting(1143, "IMAP port (STARTTLS); 143 in containers.", rule=PORT)
    imaps_port: int = _setting(1993, "IMAP over implicit TLS; 993 in containers.", rule=PORT)
    pop3_port: int = _setting(1110, "POP3 port (STLS); 110 in containers.", rule=PORT)
    pop3s_port: int = _setting(1995, "POP3 over implicit TLS; 995 in containers.", rule=PORT)
    tls_cert: str = _setting(
        "",
        "PEM certificate; default DATA_DIR/tls/cert.pem, self-signed on first start.",
        rule=FILE_OR_EMPTY,
        used_by=FRONTENDS,
    )
    tls_key: str = _setting(
        "", "PEM private key; default DATA_DIR/tls/key.pem.", secret=True, rule=FILE_OR_EMPTY, used_by=FRONTENDS
    )
    tls_certificates: str = _setting(
        "",
        "More certificates for SNI: CERT:KEY,... (PEM paths); each serves the DNS names in it, wildcards"
        " too; other names get MAILSTACK_TLS_CERT.",
        used_by=FRONTENDS,
    )
    tls_reload_interval: int = _setting(
        30, "Seconds between checks of the TLS files for a change (renewals; SIGHUP reloads at once; 0 = never)."
    )
    allow_plaintext_auth: bool = _setting(False, "Allow LOGIN/AUTH before TLS (tests only).")

    # operation
    log_level: str = _setting(
        "INFO", "Log level.", rule=one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", fold_case=True)
    )
    log_format: str = _setting("text", "Log format: text or json.", rule=one_of("text", "json"))
    metrics_port: int = _setting(0, "Prometheus /metrics port (0 = off).", rule=PORT)
    workers: str = _setting(
        "auto",
        "Processes of the all-in-one `mailstack serve`, each with every service, sharing its ports (SO_REUSEPORT) "
        "and data (ADR 0043): a number, or auto = one per usable CPU (a container's CPU quota counts), and one "
        "where workers cannot run (ADR 0047); metrics of worker N on MAILSTACK_METRICS_PORT + N.",
        rule=WORKERS,
    )

    # smtp
    smtp_max_recipients: int = _setting(100, "Most RCPT TO per SMTP transaction (more: 452 4.5.3).", rule=AT_LEAST_1)
    smtp_max_connections: int = _setting(
        1000, "Most SMTP connections at once, all ports together (more: 421 4.7.0).", rule=AT_LEAST_1
    )
    smtp_max_connections_per_ip: int = _setting(
        50, "Most SMTP connections at once from one client IP (more: 421; 0 = no per-IP limit).", rule=AT_LEAST_0
    )
    smtp_command_timeout: int = _setting(
        300, "Seconds an SMTP client may idle between commands (RFC 5321 4.5.3.2.7).", rule=AT_LEAST_1
    )
    smtp_data_timeout: int = _setting(
        180, "Seconds an SMTP client may pause inside DATA (RFC 5321 4.5.3.2.5).", rule=AT_LEAST_1
    )
    smtp_auth_failure_delay_ms: int = _setting(1000, "Delay before answering a failed SMTP AUTH, in ms.")
    smtp_inflight_bytes: int = _setting(
        256 * MiB,
        "Message content all SMTP sessions of a process may hold at once, in bytes (0 = unbounded); "
        "beyond it a transaction is answered 452 4.3.1. Keep it at least max_message_size.",
    )

    # pop3
    pop3_idle_timeout: int = _setting(
        600, "POP3 inactivity autologout in seconds (RFC 1939 §3: at least 600).", rule=AT_LEAST_1
    )
    pop3_lease_ttl: int = _setting(
        60, "POP3 maildrop lock lease in seconds; renewed every third of it.", rule=between(3)
    )
    pop3_max_auth_failures: int = _setting(3, "Failed POP3 logins before the connection is closed.", rule=AT_LEAST_1)
    pop3_auth_failure_delay_ms: int = _setting(1000, "Delay before answering a failed POP3 login, in ms.")
    pop3_max_connections: int = _setting(
        10000, "Most POP3 connections at once, both ports together (more: -ERR).", rule=AT_LEAST_1
    )
    pop3_max_connections_per_ip: int = _setting(
        50, "Most POP3 connections at once from one client IP (more: -ERR; 0 = no per-IP limit).", rule=AT_LEAST_0
    )
    pop3_read_ahead_bytes: int = _setting(
        64 * 1024 * 1024, "Message bytes all POP3 sessions of a process may fetch ahead of RETR (4 MiB each; 0 = off)."
    )

    # imap
    imap_max_connections: int = _setting(10000, "Most IMAP connections at once, all ports together.", rule=AT_LEAST_1)
    imap_max_connections_per_ip: int = _setting(
        200, "Most IMAP connections at once from one client IP.", rule=AT_LEAST_1
    )
    imap_max_connections_per_user: int = _setting(50, "Most IMAP sessions at once of one account.", rule=AT_LEAST_1)
    imap_preauth_timeout: int = _setting(
        60, "Seconds an IMAP client may stay unauthenticated between commands.", rule=AT_LEAST_1
    )
    imap_autologout: int = _setting(
        1800, "IMAP inactivity autologout after login, seconds (RFC 9051 5.4: >= 1800).", rule=AT_LEAST_1
    )
    imap_idle_keepalive: int = _setting(120, "Seconds between '* OK Still here' while a client IDLEs.", rule=AT_LEAST_1)
    imap_poll_interval: int = _setting(
        30, "Seconds between change polls of an IDLE session (push may be lost).", rule=AT_LEAST_1
    )
    imap_max_line: int = _setting(65536, "Longest IMAP command line in bytes (longer: BAD).", rule=between(1000))
    imap_commands_per_second: int = _setting(
        500, "Sustained IMAP commands per second per connection (burst 5x).", rule=AT_LEAST_1
    )
    imap_read_ahead_bytes: int = _setting(
        64 * 1024 * 1024,
        "Message bytes all IMAP sessions of a process may fetch ahead of FETCH BODY[] of consecutive messages "
        "(1 MiB each; 0 = off).",
    )
    imap_auth_max_failures: int = _setting(3, "Failed IMAP logins per connection before it is closed.", rule=AT_LEAST_1)
    imap_auth_failure_delay_ms: int = _setting(1000, "Delay before answering a failed IMAP login, in ms.")
    imap_index_messages: int = _setting(
        100_000,
        "Messages the IMAP mailbox index of a process holds (about 200 bytes each), all mailboxes together; "
        "the least recently selected mailbox goes first (0 = off: every SELECT lists the mailbox).",
    )

    # password guessing, all protocols and the Send API together (ADR 0011)
    auth_max_attempts_per_ip: int = _setting(
        20, "Failed plus in-progress logins per client IP per window, all protocols together (more: refused; 0 = off)."
    )
    auth_max_attempts_per_account: int = _setting(
        100, "Failed plus in-progress logins at one account per window, from all IPs (more: refused; 0 = off)."
    )
    auth_failure_window: int = _setting(
        300, "Seconds a failed login counts against its IP and its account.", rule=AT_LEAST_1
    )

    # proxy protocol (ADR 0007)
    proxy_protocol: bool = _setting(False, "Expect a PROXY header (v1/v2) from trusted networks on every mail port.")
    proxy_trusted_networks: str = _setting(
        "127.0.0.1/32,::1/128",
        "Comma-separated CIDRs of load balancers that must send a PROXY header.",
        rule=CIDR_LIST,
    )
    proxy_header_timeout: int = _setting(5, "Seconds a trusted peer has to send its PROXY header.", rule=AT_LEAST_1)

    # outbound (ADR 0008)
    outbound_resolver: str = _setting(
        "dns",
        "How the worker finds MX hosts: dns, or static:DOMAIN=HOST:PORT,... ('*' = any domain; tests).",
        rule=RESOLVER,
    )
    outbound_smarthost: str = _setting(
        "", "Relay all outbound mail through HOST:PORT (TLS required; 465 = implicit).", rule=HOST_PORT_OR_EMPTY
    )
    outbound_smarthost_user: str = _setting("", "AUTH user for the smarthost (empty = no AUTH).")
    outbound_smarthost_password: str = _setting("", "AUTH password for the smarthost.", secret=True)
    outbound_retry_schedule: str = _setting(
        "300,900,1800,3600,7200,14400",
        "Seconds before each retry (the last repeats), comma-separated.",
        rule=SECONDS_LIST,
    )
    outbound_max_lifetime: int = _setting(
        5 * 86400, "Seconds a message may stay queued before it bounces.", rule=AT_LEAST_1
    )
    outbound_lease_seconds: int = _setting(
        600, "A worker's lease on a message; a dead worker's lease expires.", rule=AT_LEAST_1
    )
    outbound_concurrency: int = _setting(16, "Messages one outbound worker delivers at once.", rule=AT_LEAST_1)
    outbound_poll_ms: int = _setting(
        1000, "Milliseconds between queue polls of an idle outbound worker.", rule=AT_LEAST_1
    )
    outbound_connect_timeout: int = _setting(
        30, "Seconds to connect to a remote MX and for each SMTP reply.", rule=AT_LEAST_1
    )
    outbound_helo_name: str = _setting(
        "", "EHLO name of the outbound worker (default: hostname).", rule=DOMAIN_OR_EMPTY
    )
    dkim_keys: str = _setting(
        "",
        "DKIM signing keys: DOMAIN=SELECTOR:/path/key.pem,... or a folder of DOMAIN.SELECTOR.pem files"
        " (mount from a Secret).",
        rule=DKIM_KEYS,
        used_by=("mailstore",),
    )
    save_sent_copies: bool = _setting(False, "Save a copy of submitted/sent mail in the sender's Sent mailbox.")
    submission_from_check: str = _setting(
        "strict",
        "SMTP submission: strict = envelope sender and header From/Sender must be the login's address or alias; "
        "envelope = the envelope sender only; off = neither.",
        rule=one_of("strict", "envelope", "off"),
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
    sending_rate_window: int = _setting(
        3600, "Seconds over which the sending limits count (sliding window).", rule=AT_LEAST_1
    )

    # inbound checks on the MX port (ADR 0033): sender authentication, DNS blocklists, greylisting
    smtp_sender_auth: str = _setting(
        "off",
        "Inbound SPF/DKIM/DMARC/ARC: off; annotate = Authentication-Results only; enforce = also refuse on "
        "DMARC p=reject (550 5.7.1), quarantine on p=quarantine, 451 4.7.5 when DNS fails.",
    )
    authserv_id: str = _setting("", "authserv-id of the Authentication-Results header (default: hostname).")
    dns_servers: str = _setting("", "Resolvers of the inbound checks, HOST[:PORT],... (empty: /etc/resolv.conf).")
    dns_timeout_ms: int = _setting(5000, "Milliseconds one DNS lookup of the inbound checks may take.")
    smtp_auth_timeout: int = _setting(20, "Seconds SPF, DKIM, ARC or DMARC may take each (then: temperror).")
    smtp_quarantine_mailbox: str = _setting("Junk", "Mailbox for mail DMARC quarantines (INBOX if it is missing).")
    smtp_dnsbl_zones: str = _setting("", "DNS blocklists, ZONE[=WEIGHT],... (empty: none).")
    smtp_dnsbl_threshold: int = _setting(1, "Listed weight that refuses a client at RCPT (554 5.7.1).")
    smtp_greylist_delay: int = _setting(0, "Greylisting: seconds before a new triplet's retry passes (0 = off).")
    smtp_greylist_retry_window: int = _setting(172800, "Greylisting: seconds a first attempt waits for its retry.")
    smtp_greylist_lifetime: int = _setting(3024000, "Greylisting: seconds a passed triplet is let through.")
    smtp_greylist_url: str = _setting(
        "", "Greylisting state: redis://... (shared by replicas); empty: the events Redis, else in-process."
    )

    # a real MX (issue 18): LMTP, subaddressing, the spam filter (ADR 0034)
    lmtp_port: int = _setting(2424, "LMTP port for an MTA in front (RFC 2033); 24 in containers, 0 = off.")
    lmtp_trusted_networks: str = _setting(
        "127.0.0.1/32,::1/128", "Comma-separated CIDRs that may connect to the LMTP port (others: 554 and closed)."
    )
    subaddress_delimiter: str = _setting(
        "+", "Subaddress delimiter (RFC 5233): user+tag@domain is user@domain; empty = off."
    )
    subaddress_folders: bool = _setting(False, "Deliver user+tag@domain into the folder named tag when it exists.")
    spam_filter_url: str = _setting("", "rspamd's normal worker, http://HOST:PORT (empty = no spam filter).")
    spam_filter_timeout_ms: int = _setting(10000, "Milliseconds to wait for the spam filter's verdict.")
    spam_filter_fail: str = _setting(
        "open", "When the spam filter is down or late: open = accept unfiltered, closed = 451 4.7.1."
    )
    srs_secret: str = _setting(
        "", "Secret of the SRS addresses of forwarded mail (forwarding is refused without it).", secret=True
    )
    srs_domain: str = _setting("", "Domain of SRS envelope senders (empty: the forwarding address's domain).")

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


# Variables of the `mailstack` command that are not settings (no warning for them), and the test
# suite's own prefix (MAILSTACK_TEST_REDIS_URL, ..._MAILSTORE_TRANSPORT: read by tests/fixtures).
NOT_SETTINGS = frozenset({"MAILSTACK_CONFIG"})
TEST_PREFIX = "MAILSTACK_TEST_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class SettingError(ValueError):
    """A value a setting does not allow, as one line: the setting, its value, where it was given
    when not in the environment, the problem, and what is allowed."""

    def __init__(self, name: str, value: Any, problem: str, allowed: str, origin: str = "") -> None:
        self.name, self.problem, self.allowed, self.origin = name, problem, allowed, origin
        self.shown = _shown(value)  # never the value itself: a URL's password stays out of every output
        where = f" (from {origin})" if origin and origin != "environment" else ""
        super().__init__(f"{env_name(name)}={self.shown}{where}: {problem}; allowed: {allowed}")


def _shown(value: Any) -> str:
    """The value for an error line: a password in a URL masked (a key file's path is no secret)."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if "://" in text:
        try:
            text = mask_url(text)
        except ValueError:  # not even a URL: it could still hold a password
            text = text.split("://", 1)[0] + "://(not shown)"
    if len(text) > 120:
        text = text[:117] + "..."
    return text if text and text.isprintable() and " " not in text else repr(text)


def _convert(raw: Any, default: Any) -> Any:
    """The value as the setting's type; raises ValueError with the problem."""
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("not a boolean")
    if isinstance(default, int):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):
                return int(raw.strip())
        raise ValueError("not a whole number")  # 2.5 from a TOML file too: never rounded silently
    if isinstance(raw, bool | list | dict):
        raise ValueError("not a string")
    return str(raw)


def _type_allowed(f: dataclasses.Field[Any]) -> str:
    if isinstance(f.default, bool):
        return "true or false (also yes/no, on/off, 1/0)"
    rule: Rule | None = f.metadata.get("rule")
    return rule.allowed if rule else "a string"


def _sectioned(name: str) -> str:
    """The key a setting has in its service's TOML section: smtp_port -> smtp.port."""
    return name.replace("_", ".", 1)


def _closest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else "; `mailstack config` lists the settings"


def _file_values(data: Mapping[str, Any], path: str) -> tuple[dict[str, tuple[Any, str]], list[str]]:
    """A TOML file's settings by field name, each with the key it was given as, and a warning for each
    key that is no setting. A table is a service's section: `[smtp] port = 25` is smtp_port, as the
    flat key `smtp_port = 25` (and MAILSTACK_SMTP_PORT) is."""
    known = [f.name for f in dataclasses.fields(Settings)]
    values: dict[str, tuple[Any, str]] = {}
    unknown: list[str] = []
    for key, value in data.items():
        items = [(f"{key}_{k}", f"{key}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else []
        for name, shown, item in items or [(key, key, value)]:
            if name not in known or isinstance(item, dict):
                unknown.append(shown)
            elif name in values:
                raise ValueError(f"{path}: {shown} is set twice (in its section and as {name})")
            else:
                values[name] = (item, shown)
    candidates = known + [_sectioned(n) for n in known if "_" in n]
    warnings = [f"{path}: {key} is not a setting{_closest(key, candidates)} (ignored)" for key in sorted(unknown)]
    return values, warnings


@dataclass
class Loaded:
    """Settings as loaded: where each value not a default came from, warnings (unknown names), and
    the values that are not even of the setting's type (they keep their defaults here)."""

    settings: Settings
    origins: dict[str, str]  # field name -> "environment" or "FILE: key"
    warnings: list[str]
    errors: list[SettingError]


def load(env: Mapping[str, str] | None = None, config_file: str | None = None) -> Loaded:
    """Defaults < TOML file (MAILSTACK_CONFIG or config_file) < MAILSTACK_* variables. Raises OSError
    (the file), ValueError (its syntax, a key given twice); bad values are in Loaded.errors."""
    env = os.environ if env is None else env
    raw: dict[str, tuple[Any, str]] = {}
    warnings: list[str] = []
    path = config_file or env.get("MAILSTACK_CONFIG")
    if path:
        with open(path, "rb") as fh:
            values, warnings = _file_values(tomllib.load(fh), path)
        raw.update({name: (value, f"{path}: {key}") for name, (value, key) in values.items()})
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    env_names = {env_name(name): name for name in fields}
    for variable in sorted(env):
        if variable in env_names:
            raw[env_names[variable]] = (env[variable], "environment")
        elif (
            variable.startswith("MAILSTACK_") and variable not in NOT_SETTINGS and not variable.startswith(TEST_PREFIX)
        ):
            warnings.append(f"{variable} is not a setting{_closest(variable, list(env_names))} (ignored)")
    converted: dict[str, Any] = {}
    errors: list[SettingError] = []
    for name, (value, origin) in raw.items():
        try:
            converted[name] = _convert(value, fields[name].default)
        except ValueError as err:
            errors.append(SettingError(name, value, str(err), _type_allowed(fields[name]), origin))
    origins = {name: origin for name, (_, origin) in raw.items()}
    return Loaded(Settings(**converted), origins, warnings, errors)


def load_settings(env: Mapping[str, str] | None = None, config_file: str | None = None) -> Settings:
    """Defaults < TOML file (MAILSTACK_CONFIG or config_file) < MAILSTACK_* variables; raises the
    first SettingError of a value not of its setting's type (check_settings looks further)."""
    loaded = load(env, config_file)
    if loaded.errors:
        raise loaded.errors[0]
    return loaded.settings


# Settings that go together: a certificate and its key.
PAIRS = (("tls_cert", "tls_key"), ("send_tls_cert", "send_tls_key"), ("grpc_cert", "grpc_key"),
         ("grpc_admin_cert", "grpc_admin_key"))  # fmt: skip


def check_settings(loaded: Loaded, services: Collection[str] | None = None) -> list[SettingError]:
    """Every value against its setting's rule, and certificates against their keys: what `mailstack
    serve` and `mailstack config --check` refuse, one SettingError per bad setting. With services,
    a setting only others read is left alone."""
    settings, origins = loaded.settings, loaded.origins
    errors = list(loaded.errors)
    bad = {e.name for e in errors}
    for f in dataclasses.fields(Settings):
        rule: Rule | None = f.metadata.get("rule")
        value = getattr(settings, f.name)
        used_by = f.metadata.get("used_by") or ()
        if services is not None and used_by and not set(used_by) & set(services):
            bad.add(f.name)  # not read here: neither its rule nor its pair is checked
        elif f.name not in bad and rule is not None and (problem := rule(value)):
            errors.append(SettingError(f.name, value, problem, rule.allowed, origins.get(f.name, "")))
            bad.add(f.name)
    for cert, key in PAIRS:
        if cert in bad or key in bad:
            continue
        if problem := _pair_problem(settings, cert, key):
            name = cert if getattr(settings, cert) else key
            allowed = f"{env_name(cert)} and {env_name(key)} both (a PEM certificate and its key), or neither"
            errors.append(SettingError(name, getattr(settings, name), problem, allowed, origins.get(name, "")))
    return errors


def _pair_problem(settings: Settings, cert_name: str, key_name: str) -> str | None:
    cert, key = getattr(settings, cert_name), getattr(settings, key_name)
    if not cert and not key:
        return None
    if not cert or not key:
        return f"{env_name(key_name if cert else cert_name)} is not set"
    try:
        # No password: an encrypted key fails here rather than asking for a passphrase on a terminal.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError, ValueError):
        return f"does not load as a PEM certificate with the key {key}"
    return None


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
