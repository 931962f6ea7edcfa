"""The certificate store's rules without a server: the setting's form, a pair that does not load,
and which pair a server name gets (RFC 6066 §3; wildcards per RFC 6125 §6.4.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mailstack.services.common.certificates import CertificateError, CertificateStore, choose, load_pair, parse_pairs
from mailstack.services.common.tls import ensure_self_signed


def test_pairs_setting() -> None:
    assert parse_pairs(" /a/c.pem:/a/k.pem , /b/c.pem:/b/k.pem,") == [
        ("/a/c.pem", "/a/k.pem"),
        ("/b/c.pem", "/b/k.pem"),
    ]
    assert parse_pairs("") == []
    for bad in ("/only/cert.pem", ":/k.pem", "/c.pem:"):
        with pytest.raises(ValueError, match="CERT_PATH:KEY_PATH"):
            parse_pairs(bad)


def test_a_pair_that_does_not_load_names_its_files(tmp_path: Path) -> None:
    ensure_self_signed(tmp_path / "a.crt", tmp_path / "a.key", "a.test")
    ensure_self_signed(tmp_path / "b.crt", tmp_path / "b.key", "b.test")
    with pytest.raises(CertificateError, match=r"b\.crt with key .*a\.key"):
        CertificateStore([(str(tmp_path / "b.crt"), str(tmp_path / "a.key"))])
    with pytest.raises(CertificateError, match=r"missing\.crt"):
        load_pair(str(tmp_path / "missing.crt"), str(tmp_path / "a.key"))
    with pytest.raises(ValueError, match="no TLS certificate"):
        CertificateStore([])


def test_choice_by_server_name(tmp_path: Path) -> None:
    ensure_self_signed(tmp_path / "a.crt", tmp_path / "a.key", "mail.a.test")  # also "localhost"
    ensure_self_signed(tmp_path / "w.crt", tmp_path / "w.key", "*.w.test")
    default, wildcard = (
        load_pair(str(tmp_path / "a.crt"), str(tmp_path / "a.key")),
        load_pair(str(tmp_path / "w.crt"), str(tmp_path / "w.key")),
    )
    assert default.names == ("localhost", "mail.a.test") and default.label == "localhost"
    loaded = [default, wildcard]
    assert choose(loaded, "x.w.test.") is wildcard  # a trailing dot is the same name
    assert choose(loaded, "X.W.TEST") is wildcard
    assert choose(loaded, "y.x.w.test") is default
    assert choose(loaded, "w.test") is default
    assert choose(loaded, "mail.a.test") is default
    assert choose(loaded, None) is default
    assert choose(loaded, "") is default
