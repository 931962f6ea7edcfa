"""SRS addresses (message/srs.py) and ARC sealing (message/arc_seal.py), pure."""

from __future__ import annotations

import dkim
import pytest
from mailstack.message import arc_seal, dkim_sign
from mailstack.message.srs import Srs

MESSAGE = b"From: a@origin.test\r\nTo: b@example.test\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def key() -> tuple[dkim_sign.DkimKey, bytes]:
    private, public = dkim_sign.generate_key(1024)
    return dkim_sign.DkimKey("example.test", "sel", private), b"v=DKIM1; k=rsa; p=" + public.encode()


def test_srs_round_trip_and_refusals() -> None:
    srs = Srs("secret")
    address = srs.forward("Bob@Origin.test", "example.test")
    assert address.startswith("SRS0=") and address.endswith("@example.test")
    assert srs.reverse(address) == "Bob@Origin.test"
    assert srs.reverse(address.replace("SRS0=", "SRS0=x", 1)) is None  # a changed hash
    assert srs.reverse("bob@example.test") is None
    assert srs.forward("", "example.test") == ""  # the null sender stays null
    # Forwarded again by us: SRS1 keeps the way back to the first forwarder.
    again = srs.forward(address, "other.test")
    assert again.startswith("SRS1=") and srs.reverse(again) == address
    with pytest.raises(ValueError):
        Srs("")


def test_a_seal_of_ours_verifies(key: tuple[dkim_sign.DkimKey, bytes]) -> None:
    private, txt = key
    sealed = arc_seal.seal(MESSAGE, private, "mx.example.test")
    result, chain, _ = dkim.arc_verify(sealed, dnsfunc=lambda name, timeout=5: txt)
    assert result == b"pass" and chain[0]["cv"] == b"none"
    assert b"\r\nAuthentication-Results: mx.example.test; arc=none\r\n" in sealed


def test_our_own_authentication_results_are_what_is_sealed(key: tuple[dkim_sign.DkimKey, bytes]) -> None:
    private, txt = key
    message = b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=origin.test\r\n" + MESSAGE
    sealed = arc_seal.seal(message, private, "mx.example.test")
    result, chain, _ = dkim.arc_verify(sealed, dnsfunc=lambda name, timeout=5: txt)
    assert result == b"pass" and b"spf=pass" in chain[0]["aar-value"]
    assert sealed.count(b"Authentication-Results: mx.example.test") == 1  # none added


def test_a_chain_we_have_no_verdict_on_is_not_sealed(key: tuple[dkim_sign.DkimKey, bytes]) -> None:
    private, _ = key
    message = b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=x.test; s=s; b=AAAA\r\n" + MESSAGE
    assert arc_seal.seal(message, private, "mx.example.test") == message
