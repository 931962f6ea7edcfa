"""One SMTP transaction per (message, domain) with the stdlib's smtplib, run in a worker thread.

smtplib rather than aiosmtplib: no new dependency, and the blocking client in a thread is
plenty for a queue worker (a thread per concurrent delivery, `outbound_concurrency` of them).
Opportunistic STARTTLS toward MX hosts (RFC 3207; certificates not verified, as every MTA
does without DANE/MTA-STS); TLS required and verified toward a smarthost. Connections are
kept per host and reused for the next message to the same host (RSET between transactions).
"""

from __future__ import annotations

import smtplib
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mailstack.services.outbound.resolver import MxHost

Outcome = Literal["delivered", "temporary", "permanent"]
MAX_IDLE_PER_HOST = 4


@dataclass(frozen=True, slots=True)
class Attempt:
    recipient: str
    outcome: Outcome
    reply: str
    remote_mta: str


@dataclass(frozen=True, slots=True)
class Smarthost:
    host: MxHost
    user: str
    password: str


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"


def _mail_options(conn: smtplib.SMTP, data: bytes) -> list[str]:
    options = []
    if not data.isascii() and conn.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")  # RFC 6152
    if conn.has_extn("size"):
        options.append(f"SIZE={len(data)}")  # RFC 1870
    return options


def _outcome(code: int) -> Outcome:
    if 200 <= code < 300:
        return "delivered"
    return "permanent" if 500 <= code < 600 else "temporary"


class ConnectionPool:
    """Idle SMTP connections by host, shared by the worker's delivery threads."""

    def __init__(self) -> None:
        self._idle: dict[MxHost, list[smtplib.SMTP]] = {}
        self._lock = threading.Lock()

    def take(self, host: MxHost) -> smtplib.SMTP | None:
        with self._lock:
            idle = self._idle.get(host)
            return idle.pop() if idle else None

    def give(self, host: MxHost, conn: smtplib.SMTP) -> None:
        with self._lock:
            idle = self._idle.setdefault(host, [])
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        _quit(conn)

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            _quit(conn)


def _quit(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()


class SmtpDelivery:
    def __init__(self, helo_name: str, timeout: float, smarthost: Smarthost | None = None) -> None:
        self.helo_name = helo_name
        self.timeout = timeout
        self.smarthost = smarthost
        self.pool = ConnectionPool()
        self._insecure = ssl.create_default_context()
        self._insecure.check_hostname = False
        self._insecure.verify_mode = ssl.CERT_NONE

    def deliver(self, hosts: Sequence[MxHost], sender: str, recipients: Sequence[str], data: bytes) -> list[Attempt]:
        """Try the hosts in order until one answers the transaction; a result per recipient."""
        if self.smarthost is not None:
            hosts = [self.smarthost.host]
        last_error = "451 4.4.1 no MX host could be reached"
        for host in hosts:
            try:
                return self._transaction(host, sender, recipients, data)
            except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
                last_error = f"451 4.4.1 {host.host}:{host.port}: {type(exc).__name__}: {exc}"
                continue
        return [Attempt(r, "temporary", last_error, "") for r in recipients]

    def _connect(self, host: MxHost) -> smtplib.SMTP:
        smarthost = self.smarthost is not None
        if smarthost and host.port == 465:  # RFC 8314 implicit TLS
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                host.host, host.port, local_hostname=self.helo_name, timeout=self.timeout,
                context=ssl.create_default_context(),
            )  # fmt: skip
        else:
            conn = smtplib.SMTP(host.host, host.port, local_hostname=self.helo_name, timeout=self.timeout)
        try:
            conn.ehlo()
            if not isinstance(conn, smtplib.SMTP_SSL):
                if conn.has_extn("starttls"):
                    conn.starttls(context=ssl.create_default_context() if smarthost else self._insecure)
                    conn.ehlo()
                elif smarthost:
                    raise smtplib.SMTPException("the smarthost does not offer STARTTLS (TLS is required)")
            if smarthost and self.smarthost is not None and self.smarthost.user:
                conn.login(self.smarthost.user, self.smarthost.password)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self, host: MxHost) -> smtplib.SMTP:
        """A pooled connection to host that still answers, else a new one."""
        conn = self.pool.take(host)
        if conn is not None:
            try:
                conn.rset()  # a reused connection: make sure it is alive and clean
                return conn
            except (OSError, smtplib.SMTPException):
                conn.close()
        return self._connect(host)

    def _transaction(self, host: MxHost, sender: str, recipients: Sequence[str], data: bytes) -> list[Attempt]:
        conn = self._connection(host)
        mta = host.host
        try:
            code, message = conn.mail(sender, _mail_options(conn, data))
            if code >= 300:
                conn.rset()
                self.pool.give(host, conn)
                return [Attempt(r, _outcome(code), _reply(code, message), mta) for r in recipients]
            results: dict[str, Attempt] = {}
            accepted = []
            for rcpt in recipients:
                code, message = conn.rcpt(rcpt)
                if code < 300:
                    accepted.append(rcpt)
                else:
                    results[rcpt] = Attempt(rcpt, _outcome(code), _reply(code, message), mta)
            if accepted:
                code, message = conn.data(data)
                for rcpt in accepted:
                    results[rcpt] = Attempt(rcpt, _outcome(code), _reply(code, message), mta)
                if code >= 300:
                    conn.rset()
            else:
                conn.rset()
        except BaseException:  # a broken connection is never put back
            conn.close()
            raise
        self.pool.give(host, conn)
        return [results[r] for r in recipients]
