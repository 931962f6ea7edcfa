"""What operators see of logins: one structured log line and one counter per login, failed or
refused login and logout, the same fields for IMAP, POP3 and SMTP AUTH (docs/fail2ban/ matches them).

    {"message": "login failed", "event": "auth", "result": "failed", "protocol": "imap",
     "remote_ip": "192.0.2.7", "local_ip": "198.51.100.1", "method": "LOGIN", "tls": true,
     "session": "5f0c2a9e41d3", "user": "alice@example.test", ...}

The user name is what the client sent: shortened and with control characters and spaces replaced,
so that it cannot forge a second field or line in the text format.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Literal, Protocol

from mailstack.services.common.metrics import AUTH_TOTAL, CONNECTIONS_REFUSED

log = logging.getLogger("mailstack.auth")

AuthResult = Literal["ok", "failed", "throttled", "logout"]
MESSAGES: dict[str, str] = {
    "ok": "login",
    "failed": "login failed",
    "throttled": "login refused",
    "logout": "logout",
}
MAX_USER = 128
_UNSAFE = re.compile(r"[\x00-\x20\x7f\"\\=]")


def printable_user(user: str) -> str:
    return _UNSAFE.sub("?", user[:MAX_USER])


def new_session_id() -> str:
    """Joins a session's login, logout and other lines."""
    return secrets.token_hex(6)


def auth_event(
    result: AuthResult,
    *,
    protocol: str,
    user: str,
    remote_ip: str,
    local_ip: str,
    method: str,
    tls: bool,
    session: str,
) -> None:
    AUTH_TOTAL.labels(protocol, result).inc()
    level = logging.INFO if result in ("ok", "logout") else logging.WARNING
    log.log(
        level,
        "%s %s",
        protocol,
        MESSAGES[result],
        extra={
            "event": "auth",
            "result": result,
            "protocol": protocol,
            "remote_ip": remote_ip,
            "local_ip": local_ip,
            "method": method,
            "tls": tls,
            "session": session,
            "user": printable_user(user),
        },
    )


class ClientEnd(Protocol):
    """What the log needs of a frontend's connection (IMAP's and POP3's StreamConnection)."""

    @property
    def remote_ip(self) -> str: ...
    @property
    def local_ip(self) -> str: ...
    @property
    def tls(self) -> bool: ...


def session_auth_event(
    result: AuthResult, protocol: str, conn: ClientEnd, session: str, user: str, method: str
) -> None:
    """auth_event for a stream session: the connection supplies the addresses and TLS state."""
    auth_event(
        result,
        protocol=protocol,
        user=user,
        remote_ip=conn.remote_ip,
        local_ip=conn.local_ip,
        method=method,
        tls=conn.tls,
        session=session,
    )


def connection_refused(protocol: str, reason: str, remote_ip: str, local_ip: str = "") -> None:
    """A connection turned away at the door (too many in total or from one IP)."""
    CONNECTIONS_REFUSED.labels(protocol, reason).inc()
    log.warning(
        "%s connection refused",
        protocol,
        extra={"event": "connection_refused", "protocol": protocol, "reason": reason, "remote_ip": remote_ip,
               "local_ip": local_ip},
    )  # fmt: skip


def local_ip_of(sockname: object) -> str:
    return str(sockname[0]) if isinstance(sockname, tuple) and sockname else ""
