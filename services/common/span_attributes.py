"""The attributes every protocol span carries about its connection, with OpenTelemetry's semantic
convention names: who connected (client.address, client.port), as whom (enduser.id, once logged
in) and how (tls.*: whether TLS is on, its version and cipher)."""

from __future__ import annotations

import ssl
from typing import Any

Attributes = dict[str, str | int | bool]


def tls_attributes(ssl_object: Any) -> Attributes:
    """tls.established and, under TLS, tls.protocol.name/version ("tls", "1.3") and tls.cipher."""
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return {"tls.established": False}
    out: Attributes = {"tls.established": True}
    version = ssl_object.version() or ""  # "TLSv1.3"
    name, _, number = version.partition("v")
    if number:
        out["tls.protocol.name"] = name.lower()
        out["tls.protocol.version"] = number
    cipher = ssl_object.cipher()
    if cipher is not None:
        out["tls.cipher"] = cipher[0]
    return out


def connection_attributes(client_ip: str, client_port: int | None, ssl_object: Any, user: str) -> Attributes:
    """client.address/port, enduser.id (when logged in) and the TLS attributes of one connection."""
    out: Attributes = {"client.address": client_ip} if client_ip else {}
    if client_port:
        out["client.port"] = client_port
    if user:
        out["enduser.id"] = user
    out.update(tls_attributes(ssl_object))
    return out
