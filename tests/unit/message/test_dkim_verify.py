"""message.dkim_verify from the RFC text and from an attacker's side: canonicalization (RFC 6376
§3.4, with its §3.4.5 example), tag lists (§3.2), the checks of a signature (§6.1.1) and of its
key record (§3.6.1, RFC 8301, RFC 8463), and the bounds on everything a sender controls.
Signatures with chosen tags are made by dkim_signing.hand_signed (see there)."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mailstack.message import dkim_verify
from mailstack.message.dkim_verify import (
    DkimPermError,
    Message,
    relaxed_body,
    relaxed_field,
    simple_body,
    tag_list,
    without_b_value,
)

from tests.fixtures.dkim_signing import Key, ed25519_key, ours, rsa_key, sign
from tests.fixtures.dkim_signing import hand_signed as signed_by

RSA = rsa_key(2048)
ED25519 = ed25519_key()
NAME = "sel._domainkey.example.test."
ED_NAME = "ed._domainkey.example.test."
RECORDS = {NAME: RSA.record, ED_NAME: ED25519.record}
MESSAGE = b"From: Alice <alice@example.test>\r\nTo: bob@example.org\r\nSubject: hello\r\n\r\nThe body.\r\n"


def hand_signed(content: bytes, tags: str, key: Key | None = None, b: str | None = None) -> bytes:
    return signed_by(content, tags, key or RSA, b)


BASE_TAGS = "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test; s=sel; h=from:to:subject"


def verdict(content: bytes, records: dict[str, bytes] | None = None, now: float | None = None) -> tuple[str, str]:
    [only] = ours(content, RECORDS if records is None else records, now)
    return only


def with_key(record: bytes) -> dict[str, bytes]:
    return {NAME: record, ED_NAME: record}


# ---------------------------------------------------------------- canonicalization (§3.4)


def test_the_rfc_example_canonicalizes_as_the_rfc_shows() -> None:
    # RFC 6376 §3.4.5, with <SP>, <HTAB> and <CRLF> written out.
    example = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n"
    message = Message(example)
    assert [relaxed_field(name, text) for name, text in message.fields] == [b"a:X\r\n", b"b:Y Z\r\n"]
    assert b"".join(text for _, text in message.fields) == b"A: X\r\nB : Y\t\r\n\tZ  \r\n", "simple: as it is"
    assert relaxed_body(message.body) == b" C\r\nD E\r\n"
    assert simple_body(message.body) == b" C \r\nD \t E\r\n"


def test_empty_bodies_follow_each_algorithm() -> None:
    # §3.4.3: an empty body is one CRLF; §3.4.4: an empty body stays empty.
    for empty in (b"", b"\r\n", b"\r\n\r\n\r\n"):
        assert simple_body(empty) == b"\r\n"
        assert relaxed_body(empty) == b""
    assert relaxed_body(b"\r\n \r\n\t\r\n") == b"", "lines of WSP are empty lines once the WSP goes"
    assert simple_body(b"\r\n \r\n") == b"\r\n \r\n", "not for simple"


def test_a_last_line_without_crlf_gets_one() -> None:
    assert simple_body(b"x") == b"x\r\n"
    assert simple_body(b"x\r") == b"x\r\r\n", "a bare CR is not a line end"
    # WSP at the end of an unterminated last line is at the end of a line too (§3.4.4 a); dkimpy
    # keeps it. SMTP mail always ends with CRLF, so no received message shows the difference.
    assert relaxed_body(b"x \t") == b"x\r\n"
    assert relaxed_body(b"x\r\n\r\n \t") == b"x\r\n", "a last line of WSP is an empty line"


def test_only_crlf_pairs_at_the_end_are_empty_lines() -> None:
    assert simple_body(b"a\r\n\n\r\n") == b"a\r\n\n\r\n", "the bare LF ends no empty line"
    assert simple_body(b"a\r\r\n\r\n") == b"a\r\r\n"
    assert relaxed_body(b"a  b\t\tc \r\n\r\n") == b"a b c\r\n"


def test_long_runs_of_wsp_and_empty_lines_reduce_whole() -> None:
    assert relaxed_body(b" \t" * 100_000 + b"x" + b"\t" * 99_999 + b"y\r\n") == b" x y\r\n"
    assert relaxed_body(b"x\r\n" + b" \r\n" * 100_000) == b"x\r\n"
    assert simple_body(b"x\r\n" + b"\r\n" * 100_000) == b"x\r\n"


def test_a_header_field_is_unfolded_and_its_wsp_reduced() -> None:
    assert relaxed_field(b"subject", b"SubJect:\t Odd \t  spacing  \r\n \t and a fold \r\n") == (
        b"subject:Odd spacing and a fold\r\n"
    )
    assert relaxed_field(b"x", b"X:\r\n") == b"x:\r\n"


def test_the_b_value_goes_and_bh_stays() -> None:
    field = b"DKIM-Signature: v=1; bh=AAAA; b=abc\r\n\tdef ; d=example.test\r\n"
    assert without_b_value(field) == b"DKIM-Signature: v=1; bh=AAAA; b=; d=example.test\r\n"
    assert without_b_value(b"DKIM-Signature: a=x;\r\n b = abc\r\n") == b"DKIM-Signature: a=x;\r\n b ="


def test_bare_lf_mail_verifies_as_crlf() -> None:
    signed = sign(MESSAGE, RSA)
    assert verdict(signed.replace(b"\r\n", b"\n")) == ("pass", "")


def test_lines_that_are_not_fields_are_passed_over() -> None:
    message = Message(b"From someone Mon Dec 7\r\nFrom: a@example.test\r\n garbage\r\nnot a field\r\n\r\nbody\r\n")
    assert [name for name, _ in message.fields] == [b"from"]
    assert Message(b"\r\nDKIM-Signature: v=1\r\n").signature_fields() == [], "that is the body"


# ---------------------------------------------------------------- tag lists (§3.2)


def test_tag_lists_allow_fws_and_a_trailing_semicolon() -> None:
    assert tag_list(b" v = 1 ;\r\n\ta=rsa-sha256;  h = from : to ;") == {
        b"v": b"1",
        b"a": b"rsa-sha256",
        b"h": b"from : to",
    }
    assert tag_list(b"x=") == {b"x": b""}


@pytest.mark.parametrize("bad", [b"v=1; v=1", b"v=1;; a=b", b"v=1; 9x=1", b"v=1; novalue", b"=1", b"v=1; a b=c"])
def test_malformed_tag_lists_are_permerrors(bad: bytes) -> None:
    with pytest.raises(DkimPermError):
        tag_list(bad)


# ---------------------------------------------------------------- the signature (§6.1.1)


def test_a_hand_made_signature_passes() -> None:
    assert verdict(hand_signed(MESSAGE, BASE_TAGS)) == ("pass", "")


@pytest.mark.parametrize("tag", ["v", "a", "b", "bh", "d", "h", "s"])
def test_each_required_tag_missing_is_a_permerror(tag: str) -> None:
    tags = "v=1; a=rsa-sha256; d=example.test; s=sel; h=from; bh=AAAA; b=AAAA"
    kept = "; ".join(t for t in tags.split("; ") if t.partition("=")[0] != tag)
    result, reason = verdict(f"DKIM-Signature: {kept}\r\n".encode() + MESSAGE)
    assert (result, f"{tag}=" in reason) == ("permerror", True), reason


@pytest.mark.parametrize(
    ("tags", "why"),
    [
        (BASE_TAGS + "; d=example.test", "twice"),
        (BASE_TAGS.replace("v=1", "v=2"), "v="),
        (BASE_TAGS.replace("a=rsa-sha256", "a=rsa-sha1"), "RFC 8301"),
        (BASE_TAGS.replace("a=rsa-sha256", "a=dsa-sha512"), "algorithm"),
        (BASE_TAGS.replace("c=relaxed/relaxed", "c=relaxed/fancy"), "canonicalization"),
        (BASE_TAGS.replace("h=from:to:subject", "h=to:subject"), "From"),
        (BASE_TAGS.replace("h=from:to:subject", "h=from::subject"), "empty"),
        (BASE_TAGS + "; i=@evil.test", "i="),
        (BASE_TAGS + "; i=user@notexample.test", "i="),  # a suffix of the name is not a subdomain
        (BASE_TAGS + "; i=no-at-sign.example.test", "i="),
        (BASE_TAGS.replace("d=example.test", "d=exa mple.test"), "d="),
        (BASE_TAGS.replace("d=example.test", "d=example..test"), "d="),
        (BASE_TAGS.replace("s=sel", "s=sel@x"), "s="),
        (BASE_TAGS + "; q=dns/other", "q="),
        (BASE_TAGS + "; t=12x", "t="),
        (BASE_TAGS + "; t=1000000000000", "t="),  # 13 digits: §3.5 allows 12
        (BASE_TAGS + "; t=1700000000; x=1700000000", "x="),
        (BASE_TAGS + "; l=-1", "l="),
        (BASE_TAGS + "; l=" + "9" * 77, "l="),
        (BASE_TAGS + "; bh=not*base64", "bh="),
        (BASE_TAGS + "; bh=AAA", "bh="),
    ],
)
def test_bad_signatures_are_permerrors(tags: str, why: str) -> None:
    result, reason = verdict(hand_signed(MESSAGE, tags, b="AAAA"))
    assert result == "permerror" and why in reason, reason


def test_garbage_in_b_is_a_permerror() -> None:
    for garbage in ("%%%%", "AAA", "A" * 2000):
        result, reason = verdict(hand_signed(MESSAGE, BASE_TAGS, b=garbage))
        assert result == "permerror" and "b=" in reason, reason


def test_an_identity_in_a_subdomain_passes() -> None:
    assert verdict(hand_signed(MESSAGE, BASE_TAGS + "; i=alice@mail.example.test")) == ("pass", "")
    assert verdict(sign(MESSAGE, RSA, identity=b"alice@mail.example.test")) == ("pass", "")


def test_an_expired_signature_fails_and_says_so() -> None:
    now = time.time()
    past = hand_signed(MESSAGE, BASE_TAGS + f"; t={int(now) - 7200}; x={int(now) - 3600}")
    result, reason = verdict(past, now=now)
    assert result == "fail" and "expired" in reason
    future = hand_signed(MESSAGE, BASE_TAGS + f"; t={int(now)}; x={int(now) + 3600}")
    assert verdict(future, now=now) == ("pass", "")
    just_past = hand_signed(MESSAGE, BASE_TAGS + f"; x={int(now) - 60}")
    assert verdict(just_past, now=now) == ("pass", ""), "within the clock skew allowed"


def test_l_longer_than_the_body_is_a_permerror_and_l_zero_signs_no_body() -> None:
    result, reason = verdict(hand_signed(MESSAGE, BASE_TAGS + "; l=" + "9" * 76))
    assert result == "permerror" and "longer than the body" in reason
    empty_hash = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    signed = hand_signed(MESSAGE, BASE_TAGS + f"; l=0; bh={empty_hash}")
    assert verdict(signed.replace(b"The body.", b"Another body entirely.")) == ("pass", "")


def test_a_changed_body_or_header_or_a_wrong_key_fails() -> None:
    signed = hand_signed(MESSAGE, BASE_TAGS)
    assert verdict(signed.replace(b"The body.", b"The b0dy.")) == ("fail", "body hash did not verify")
    assert verdict(signed.replace(b"Subject: hello", b"Subject: hallo")) == ("fail", "signature did not verify")
    assert verdict(signed, with_key(rsa_key(1024).record)) == ("fail", "signature did not verify")


def test_oversigning_lists_count_but_do_not_cost() -> None:
    names = ":".join(["from", "to", "subject"] + ["x-absent"] * 120)
    assert verdict(hand_signed(MESSAGE, BASE_TAGS.replace("h=from:to:subject", f"h={names}"))) == ("pass", "")


def test_absurd_h_lists_and_fields_are_refused_unread() -> None:
    names = ":".join(["from"] * 500)
    result, reason = verdict(hand_signed(MESSAGE, BASE_TAGS.replace("h=from:to:subject", f"h={names}"), b="AAAA"))
    assert result == "permerror" and "h=" in reason
    huge = hand_signed(MESSAGE, BASE_TAGS + "; z=" + "x" * dkim_verify.MAX_FIELD, b="AAAA")
    assert verdict(huge) == ("permerror", "signature field too long")


def test_a_second_from_spoils_the_signature() -> None:
    # RFC 6376 §8.15: an unsigned From added above the signed one would be the one shown.
    signed = hand_signed(MESSAGE, BASE_TAGS)
    assert verdict(b"From: mallory@evil.test\r\n" + signed)[0] == "fail"


def test_ed25519_signatures_verify() -> None:
    tags = BASE_TAGS.replace("a=rsa-sha256", "a=ed25519-sha256").replace("s=sel", "s=ed")
    signed = hand_signed(MESSAGE, tags, key=ED25519)
    assert verdict(signed) == ("pass", "")
    assert verdict(signed.replace(b"hello", b"hallo")) == ("fail", "signature did not verify")


# ---------------------------------------------------------------- key records (§3.6.1)


def _spki(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der)


def _p(record: bytes) -> bytes:
    return tag_list(record)[b"p"]


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (b"v=DKIM1; k=rsa; p=", "revoked"),
        (b"v=DKIM1; k=rsa", "without p="),
        (b"v=DKIM2; k=rsa; p=" + _p(RSA.record), "v="),
        (b"v=DKIM1; k=ed25519; p=" + _p(ED25519.record), "does not match"),
        (b"v=DKIM1; k=dsa; p=" + _p(RSA.record), "unknown key type"),
        (b"v=DKIM1; h=sha1; p=" + _p(RSA.record), "h="),
        (b"v=DKIM1; s=tlsrpt; p=" + _p(RSA.record), "s="),
        (b"v=DKIM1; p=%%%%", "base64"),
        (b"v=DKIM1; p=" + base64.b64encode(b"not a key at all"), "not an RSA"),
        (b"v=DKIM1; p=" + _spki(ec.generate_private_key(ec.SECP256R1()).public_key()), "not an RSA"),
        (b"v=DKIM1; p=" + _spki(rsa.RSAPublicNumbers(65537, (1 << 511) | 0xF1).public_key()), "512 bits"),
        (b"v=DKIM1; p=" + _spki(rsa.RSAPublicNumbers(65537, (1 << 8199) | 0xF1).public_key()), "8200 bits"),
        (b"v=DKIM1; p=" + _spki(rsa.RSAPublicNumbers((1 << 100) + 1, (1 << 2047) | 0xF1).public_key()), "exponent"),
        (b"v=DKIM1; v=DKIM1; p=" + _p(RSA.record), "twice"),
        (b"v=DKIM1; n=" + b"x" * dkim_verify.MAX_KEY_RECORD + b"; p=" + _p(RSA.record), "too long"),
    ],
)
def test_unusable_keys_are_permerrors(record: bytes, why: str) -> None:
    result, reason = verdict(hand_signed(MESSAGE, BASE_TAGS), with_key(record))
    assert result == "permerror" and why in reason, reason


def test_an_rsa_record_for_an_ed25519_signature_is_a_permerror() -> None:
    tags = BASE_TAGS.replace("a=rsa-sha256", "a=ed25519-sha256")
    result, reason = verdict(hand_signed(MESSAGE, tags, key=ED25519), with_key(RSA.record))
    assert result == "permerror" and "does not match" in reason


def test_key_options_that_allow_the_signature() -> None:
    p = _p(RSA.record)
    for record in (b"p=" + p, b"v=DKIM1; h=sha1:sha256; s=email:*; t=y; n=notes; p=" + p, b"k=RSA; s=*; p=" + p):
        assert verdict(hand_signed(MESSAGE, BASE_TAGS), with_key(record)) == ("pass", ""), record


def test_t_s_keys_want_the_identity_in_d_itself() -> None:
    strict = with_key(b"v=DKIM1; t=y:s; p=" + _p(RSA.record))
    assert verdict(hand_signed(MESSAGE, BASE_TAGS + "; i=a@example.test"), strict) == ("pass", "")
    result, reason = verdict(hand_signed(MESSAGE, BASE_TAGS + "; i=a@sub.example.test"), strict)
    assert result == "permerror" and "t=s" in reason


def test_a_key_record_is_parsed_once() -> None:
    record = b"v=DKIM1; n=parsed once; p=" + _p(RSA.record)
    before = dkim_verify._parsed_key.cache_info()
    for _ in range(3):
        assert verdict(hand_signed(MESSAGE, BASE_TAGS), with_key(record)) == ("pass", "")
    after = dkim_verify._parsed_key.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)
