"""The connection attributes of protocol spans, from a real TLS handshake (memory BIOs, no socket)."""

from __future__ import annotations

import ssl
from pathlib import Path

from mailstack.services.common.span_attributes import connection_attributes, tls_attributes
from mailstack.services.common.tls import ensure_self_signed, server_ssl_context


def handshake(tmp_path: Path, version: ssl.TLSVersion) -> ssl.SSLObject:
    """The server's SSLObject after a completed handshake with a client limited to `version`."""
    ensure_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example.test")
    server_ctx = server_ssl_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    client_ctx.minimum_version = client_ctx.maximum_version = version
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname="mail.example.test")
    done = {"server": False, "client": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            return server
    raise AssertionError("the handshake did not complete")


def test_tls_1_3_is_named_as_the_semantic_conventions_say(tmp_path: Path) -> None:
    attributes = tls_attributes(handshake(tmp_path, ssl.TLSVersion.TLSv1_3))
    assert attributes["tls.established"] is True
    assert (attributes["tls.protocol.name"], attributes["tls.protocol.version"]) == ("tls", "1.3")
    assert str(attributes["tls.cipher"]).startswith("TLS_")  # an IANA TLS 1.3 suite, e.g. TLS_AES_256_GCM_SHA384


def test_tls_1_2(tmp_path: Path) -> None:
    attributes = tls_attributes(handshake(tmp_path, ssl.TLSVersion.TLSv1_2))
    assert attributes["tls.protocol.version"] == "1.2" and attributes["tls.cipher"]


def test_plaintext_connection_and_user() -> None:
    attributes = connection_attributes("192.0.2.7", 50123, None, "alice@example.test")
    assert attributes == {
        "client.address": "192.0.2.7",
        "client.port": 50123,
        "enduser.id": "alice@example.test",
        "tls.established": False,
    }
    # before login and behind a PROXY balancer (no client port known): no user, no port
    assert connection_attributes("192.0.2.7", None, None, "") == {
        "client.address": "192.0.2.7",
        "tls.established": False,
    }
