"""`mailstack dkim keygen` as an operator uses it (issue 17): the printed TXT record goes into a zone
file as it is, so a real zone parser (dnspython) must accept it, every string within the 255
octets a TXT character-string may hold (RFC 1035 §3.3.14), and the strings joined (RFC 6376
§3.6.2.2) must verify a signature made with the written key. The suggested MAILSTACK_DKIM_KEYS
names the key by an absolute path, and a folder of keys (a mounted Secret) is a valid setting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dkim
import dns.rdatatype
import dns.zone
import pytest
from mailstack.message.dkim_sign import parse_keys, sign

from mailstack import cli

MESSAGE = b"From: a@shop.test\r\nTo: b@x.test\r\nSubject: s\r\nDate: Fri, 15 Jan 2027 08:00:00 +0000\r\n\r\nhi\r\n"
ZONE_HEAD = """$ORIGIN shop.test.
$TTL 3600
@ IN SOA ns.shop.test. hostmaster.shop.test. 1 7200 3600 1209600 3600
@ IN NS ns.shop.test.
ns IN A 192.0.2.1
"""


def keygen(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(["dkim", "keygen", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("bits", [1024, 2048, 4096])
def test_record_parses_as_a_zone_and_verifies(
    bits: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILSTACK_DATA_DIR", "relative-data")  # the default, relative to the working folder
    out = keygen(capsys, "shop.test", "--selector", "s2027", "--bits", str(bits))
    record = out.split("publish in DNS:\n", 1)[1].split("\nthen set", 1)[0]
    zone = dns.zone.from_text(ZONE_HEAD + record + "\n", relativize=False)
    (rdata,) = zone.find_rdataset("s2027._domainkey.shop.test.", dns.rdatatype.TXT)
    assert all(len(s) <= 255 for s in rdata.strings)
    value = b"".join(rdata.strings)
    assert value.startswith(b"v=DKIM1; k=rsa; p=") and len(rdata.strings) == -(-len(value) // 255)

    key_path = tmp_path / "relative-data" / "dkim" / "shop.test.s2027.pem"
    assert f"MAILSTACK_DKIM_KEYS=shop.test=s2027:{key_path}\n" in out  # absolute, wherever it runs
    assert f"MAILSTACK_DKIM_KEYS={key_path.parent}:" in out
    keys = parse_keys(f"shop.test=s2027:{key_path}")
    signed = sign(MESSAGE, keys["shop.test"])
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: value)


def test_json_names_the_key_absolutely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = json.loads(keygen(capsys, "shop.test", "--bits", "1024", "--out", "keys/shop.pem", "--json"))
    assert data["key"] == str(tmp_path / "keys" / "shop.pem")
    assert data["setting"] == f"shop.test=mailstack:{tmp_path / 'keys' / 'shop.pem'}"


def test_a_folder_of_keys_as_a_mounted_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Secret mounted as a folder: each key a file `DOMAIN.SELECTOR.pem` behind the kubelet's
    `..data` symlink; what keygen writes into DATA_DIR/dkim is the same layout."""
    version = tmp_path / "secret" / "..2027_01_15"
    for domain, selector in (("shop.test", "s1"), ("mail.example.org", "2027q1")):
        keygen(
            capsys, domain, "--selector", selector, "--bits", "1024", "--out", str(version / f"{domain}.{selector}.pem")
        )
    os.symlink(version.name, tmp_path / "secret" / "..data")
    for name in ("shop.test.s1.pem", "mail.example.org.2027q1.pem"):
        os.symlink(f"..data/{name}", tmp_path / "secret" / name)
    keys = parse_keys(str(tmp_path / "secret"))
    assert {(k.domain, k.selector) for k in keys.values()} == {("shop.test", "s1"), ("mail.example.org", "2027q1")}
    assert dkim.verify(sign(MESSAGE, keys["shop.test"]), dnsfunc=lambda name, timeout=5: _txt(tmp_path))
    (tmp_path / "secret" / "nodot.pem").write_bytes(b"")
    with pytest.raises(ValueError, match=r"DOMAIN\.SELECTOR\.pem"):
        parse_keys(str(tmp_path / "secret"))


def _txt(tmp_path: Path) -> bytes:
    """The shop.test record, from the public half of its key file."""
    import base64

    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key((tmp_path / "secret" / "shop.test.s1.pem").read_bytes(), None)
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
