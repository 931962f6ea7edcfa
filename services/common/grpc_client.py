"""Channels to the mailstore: one place for options, address forms and interceptors.

Addresses are gRPC targets: "host:port", "unix:/path/to/socket", or several mailstore replicas
(ADR 0035): "dns:///host:port" (every address the name resolves to, re-resolved as replicas come
and go: a headless Service) or a comma list "host:port,host:port"; calls are spread over them
round robin. Every channel to the internal API is mTLS with the caller's identity (ADR 0009): the
client proves its name (smtp, imap, ...) with its certificate and checks that the server is
"mailstore", whatever address it dials.

Only reads are retried (IDEMPOTENT_METHODS, on UNAVAILABLE: a replica died under the call; the
retry goes to another one). No wait_for_ready, and writes are never retried: Append and Deliver
are not idempotent, and a caller that cannot reach the mailstore must hear so at once (SMTP
answers 451, IMAP NO [UNAVAILABLE], the CLI exits 2).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from mailstack.services.common import internal_ca
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg

if TYPE_CHECKING:
    from mailstack.services.common.config import Settings

log = logging.getLogger("mailstack.grpc")

MiB = 1024 * 1024
MAX_MESSAGE_SIZE = 8 * MiB  # bodies travel in <= 1 MiB chunks; metadata batches stay well below this
ERROR_DETAIL_KEY = "mailstack-error-bin"  # trailing metadata: a serialized pb.ErrorDetail

# Keepalive pings notice a dead mailstore (or a silently dropped connection) on idle
# channels and on long-lived streams such as Watch, within about 30 s.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 1),  # only the methods of RETRY_POLICY (reads); see service_config
    # Calls fail at once while the channel is down, so it must try to reconnect often: gRPC's default
    # backoff (x1.6 per attempt, up to 120 s) left the frontends failing for seconds to minutes after
    # a restarted mailstore was back (tests/e2e/test_topology.py).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

# What the mailstore's server must allow so that the clients' pings above are not
# answered with GOAWAY "too_many_pings" (the server default is one ping per 5 minutes).
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    # A client re-resolves dns:/// names only when a connection ends: closing each one after ~5 minutes
    # (GOAWAY; calls in flight finish, the grace is unbounded) lets replicas added by an autoscaler get
    # their share of the calls within minutes (ADR 0035).
    ("grpc.max_connection_age_ms", 300_000),
]


SCHEMES = ("unix:", "dns:", "ipv4:", "ipv6:")  # gRPC target schemes passed through as they are

# Calls that change nothing: safe to send again to another replica when the first died under them
# (UNAVAILABLE). Authenticate may count one failure up to three times for the login throttle: rare, harmless.
IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "mailstack.v1.Mailstore": (
        "Authenticate", "ResolveRecipient", "CheckSender", "ListMailboxes", "GetMailboxStatus", "FetchMetadata",
        "FetchBody", "FetchBodies", "Search", "SearchSortData", "GetQuota", "GetChanges",
    ),
    "mailstack.v1.Admin": ("GetAccount", "ListAccounts", "ListDomains", "ListAliases"),
    "mailstack.v1.SendAdmin": ("ListTokens",),
    "mailstack.v1.Sender": ("GetSendStatus",),
    "mailstack.v1.Outbound": ("FetchOutboundBody",),
}  # fmt: skip
RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config(balanced: bool) -> str:
    """The channel's gRPC service config: retries for the reads, and round robin over the resolved
    addresses when the target names several replicas (pick_first would send every call to one)."""
    names = [
        {"service": service, "method": method} for service, methods in IDEMPOTENT_METHODS.items() for method in methods
    ]
    config: dict[str, Any] = {"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


def _split_host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid mailstore address {address!r}: use HOST:PORT, dns:///HOST:PORT or unix:/PATH")
    return host.removeprefix("[").removesuffix("]"), port


def check_address(address: str) -> str:
    """The address as given, if it is one of the forms above; ValueError naming the problem if not."""
    if not address or address.strip() != address or " " in address:
        raise ValueError(f"invalid mailstore address {address!r}: use HOST:PORT, dns:///HOST:PORT or unix:/PATH")
    if address.startswith(SCHEMES):
        return address
    for part in address.split(","):
        _split_host_port(part)
    return address


def _literal(host: str, port: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The host's address: itself when it is one, else its first one in DNS (resolved once, at open)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise ValueError(f"mailstore address {host}:{port}: {err}") from None
    return ipaddress.ip_address(infos[0][4][0])


def channel_target(address: str) -> tuple[str, bool]:
    """(the gRPC target, whether calls are balanced over several addresses) for a mailstore address.

    A comma list becomes gRPC's static "ipv4:a:p,b:p" (or ipv6:) target: the names in it are resolved
    once, here; use dns:/// for a set of replicas that changes."""
    check_address(address)
    if address.startswith("dns:"):
        return address, True
    if address.startswith(SCHEMES) or "," not in address:
        return address, address.startswith(("ipv4:", "ipv6:")) and "," in address
    literals = [(_literal(host, port), port) for host, port in map(_split_host_port, address.split(","))]
    versions = {ip.version for ip, _ in literals}
    if len(versions) > 1:
        raise ValueError(f"mailstore addresses {address!r} mix IPv4 and IPv6: use one family, or dns:///NAME:PORT")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in literals), True
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in literals), True


def channel_options(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """The target and every option of a channel to `address` (mTLS name check included)."""
    target, balanced = channel_target(address)
    return target, [*CHANNEL_OPTIONS, *TLS_CHANNEL_OPTIONS, ("grpc.service_config", service_config(balanced))]


def client_interceptors() -> list[Any]:
    """The one place where client interceptors are added (asyncio channels).

    Trace context goes into each call's metadata only while spans are recorded (an OTLP exporter
    or a test's exporter is set up before the channel opens): an intercepted grpc.aio call costs an
    extra task per call, not worth paying when no trace is collected."""
    from mailstack.services.common import telemetry  # here: the CLI imports this module and needs no SDK
    from mailstack.services.common.grpc_tracing import client_trace_interceptors

    return client_trace_interceptors() if telemetry.tracing_enabled() else []


class IdentityError(Exception):
    """No usable gRPC identity: a message for the operator."""


@dataclass(frozen=True)
class Identity:
    """A caller's (or the mailstore's) credentials on the internal API: PEM bytes, read once."""

    name: str
    ca: bytes
    cert: bytes
    key: bytes

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        # A client certificate is required at the handshake: grpc's Python API can only require one
        # or not ask for it at all (then no caller would have a name). ADR 0009.
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)


def _read(name: str, ca: Path, cert: Path, key: Path) -> Identity:
    try:
        return Identity(name, ca.read_bytes(), cert.read_bytes(), key.read_bytes())
    except OSError as err:
        raise IdentityError(f"gRPC identity {name}: {err}") from None


def _explicit(settings: Settings, name: str, cert: str, key: str) -> Identity:
    if not (cert and key):
        raise IdentityError("set both the gRPC certificate and its key, or neither")
    ca = settings.grpc_ca or str(internal_ca.data_folder(settings.data_dir) / "ca.crt")
    identity = _read(name, Path(ca), Path(cert), Path(key))
    actual = internal_ca.certificate_name(identity.cert)
    if actual != name:  # a frontend given another's Secret: the mailstore will refuse its calls
        log.warning(
            "gRPC certificate names another identity", extra={"certificate": cert, "identity": actual, "expected": name}
        )
    return Identity(actual, identity.ca, identity.cert, identity.key)


def identity_for(settings: Settings, name: str) -> Identity:
    """The identity a service calls (or, for "mailstore", serves) with: the files MAILSTACK_GRPC_CERT,
    _KEY and _CA name, else DATA_DIR/grpc/NAME.crt and .key, created with the CA on first use (the
    embedded default: every service of `mailstack serve` on one data folder has its own name)."""
    if settings.grpc_cert or settings.grpc_key:
        return _explicit(settings, name, settings.grpc_cert, settings.grpc_key)
    if settings.grpc_ca:
        raise IdentityError(f"MAILSTACK_GRPC_CA is set: set MAILSTACK_GRPC_CERT and _KEY for {name} as well")
    files = internal_ca.data_identity(settings.data_dir, name)
    if not files.exists():
        internal_ca.ensure_data_identities(settings.data_dir)
    return _read(name, files.ca, files.cert, files.key)


def admin_identity(settings: Settings) -> Identity:
    """The CLI's identity, found without configuration: MAILSTACK_GRPC_ADMIN_CERT/_KEY, else the data
    folder's admin identity, else MAILSTACK_GRPC_CERT/_KEY (a pod that holds only the admin Secret).
    Never created here: a CLI pointed at the wrong data folder must say so, not make a new CA."""
    if settings.grpc_admin_cert or settings.grpc_admin_key:
        return _explicit(settings, internal_ca.ADMIN, settings.grpc_admin_cert, settings.grpc_admin_key)
    files = internal_ca.data_identity(settings.data_dir, internal_ca.ADMIN)
    if files.exists():
        return _read(internal_ca.ADMIN, files.ca, files.cert, files.key)
    if settings.grpc_cert or settings.grpc_key:
        return _explicit(settings, internal_ca.ADMIN, settings.grpc_cert, settings.grpc_key)
    raise IdentityError(
        f"no admin identity in {files.cert.parent} (is MAILSTACK_DATA_DIR the mailstore's?); "
        "or set MAILSTACK_GRPC_ADMIN_CERT, _ADMIN_KEY and MAILSTACK_GRPC_CA"
    )


# Clients check the server's certificate for this name, not for the address they dial (loopback,
# a unix socket, a Service name): the CA is private, so the name is the identity, not a host name.
TLS_CHANNEL_OPTIONS: list[tuple[str, Any]] = [("grpc.ssl_target_name_override", internal_ca.SERVER)]


def open_channel(address: str, identity: Identity) -> grpc.aio.Channel:
    """An asyncio mTLS channel to the internal API as `identity`; close it with `await channel.close()`."""
    target, options = channel_options(address)
    return grpc.aio.secure_channel(
        target, identity.channel_credentials(), options=options, interceptors=client_interceptors() or None
    )


def open_sync_channel(address: str, identity: Identity) -> grpc.Channel:
    """A blocking channel for the CLI (no interceptors: the CLI records no spans); close it with `channel.close()`."""
    target, options = channel_options(address)
    return grpc.secure_channel(target, identity.channel_credentials(), options=options)


def error_detail(err: grpc.RpcError) -> pb.ErrorDetail | None:
    """The mailstore's ErrorDetail from an error's trailing metadata, if it sent one."""
    trailing = getattr(err, "trailing_metadata", None)
    if trailing is None:
        return None
    try:
        metadata = trailing()
    except Exception:  # a client-side error (e.g. never connected) may carry no call
        return None
    for key, value in metadata or ():
        if key == ERROR_DETAIL_KEY and isinstance(value, bytes):
            detail = pb.ErrorDetail()
            try:
                detail.ParseFromString(value)
            except Exception:  # a corrupt detail must not hide the status code
                return None
            return detail
    return None


def error_message(err: grpc.RpcError) -> str:
    """A one-line message for an error: the ErrorDetail's, else the status details."""
    detail = error_detail(err)
    if detail is not None and detail.reason:
        # "account not found: bob@example.test" -- the reason, unless the message already says it
        reason = pb.ErrorReason.Name(detail.reason).replace("_", " ").lower()
        if not detail.message:
            return reason
        return detail.message if reason in detail.message.lower() else f"{reason}: {detail.message}"
    if detail is not None and detail.message:
        return detail.message
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else None
    if details:
        return str(details)
    return code.name.lower() if code is not None else str(err)


def mailstore_stub(channel: grpc.aio.Channel) -> pbg.MailstoreAsyncStub:
    """The Mailstore stub for a grpc.aio channel (mypy-protobuf's overload types it as the async stub)."""
    return pbg.MailstoreStub(channel)


async def stream_bodies(
    stub: pbg.MailstoreAsyncStub,
    request: pb.FetchBodiesRequest,
    deadline_seconds: float,
    metadata: dict[int, pb.MessageMetadata] | None = None,
    missing: set[int] | None = None,
) -> AsyncGenerator[tuple[tuple[int, int], bytes, bool], None]:
    """A FetchBodies call item by item, as each one's last chunk arrives: ((uid, section index),
    bytes, only CRLF line ends). Messages gone are never yielded, nor messages whose body is
    missing from the store (BodyChunk.missing): their UIDs go to `missing`. Leaving the loop early
    cancels the call. The metadata sent with the chunks (request.metadata) is put in `metadata` by UID."""
    call = stub.FetchBodies(request, timeout=deadline_seconds)
    parts: dict[tuple[int, int], list[bytes]] = {}
    try:
        async for reply in call:
            for chunk in reply.chunks:
                if metadata is not None and chunk.HasField("metadata"):
                    metadata[chunk.uid] = chunk.metadata
                if chunk.missing:
                    if missing is not None:
                        missing.add(chunk.uid)
                    continue
                if chunk.last and chunk.total_size:  # the whole item in one chunk: the common case
                    yield (chunk.uid, chunk.section_index), chunk.data, chunk.crlf
                    continue
                key = (chunk.uid, chunk.section_index)
                parts.setdefault(key, []).append(chunk.data)
                if chunk.last:
                    yield key, b"".join(parts.pop(key)), chunk.crlf
    finally:
        call.cancel()


async def stream_whole_bodies(
    stub: pbg.MailstoreAsyncStub,
    account: str,
    mailbox: str,
    uids: pb.UidSet,
    deadline_seconds: float,
    max_bytes: int = 0,
) -> AsyncGenerator[tuple[int, bytes, bool], None]:
    """Whole messages in one FetchBodies call, each as it arrives: (uid, bytes, only CRLF line
    ends). With `max_bytes`, only the first messages whose sizes add up to at most that (the first
    always): read-ahead. Leaving the loop early cancels the call."""
    request = pb.FetchBodiesRequest(
        account=account,
        mailbox=mailbox,
        uids=uids,
        sections=[pb.BodySection(section=pb.Section(text=pb.SECTION_ALL))],
        max_bytes=max_bytes,
    )
    items = stream_bodies(stub, request, deadline_seconds)
    async with contextlib.aclosing(items):
        async for (uid, _index), data, crlf in items:
            yield uid, data, crlf


async def collect_bodies(
    stub: pbg.MailstoreAsyncStub,
    request: pb.FetchBodiesRequest,
    deadline_seconds: float,
    crlf: set[tuple[int, int]] | None = None,
    metadata: dict[int, pb.MessageMetadata] | None = None,
    missing: set[int] | None = None,
) -> dict[tuple[int, int], bytes]:
    """A FetchBodies call gathered: {(uid, section index): bytes}; messages gone are absent.
    The keys of items the mailstore marks as having only CRLF line ends are added to `crlf`, the
    metadata sent with the chunks to `metadata`, the UIDs of bodies missing from the store to `missing`."""
    out: dict[tuple[int, int], bytes] = {}
    items = stream_bodies(stub, request, deadline_seconds, metadata, missing)
    async with contextlib.aclosing(items):
        async for key, data, only_crlf in items:
            out[key] = data
            if crlf is not None and only_crlf:
                crlf.add(key)
    return out
