"""The pure parts of the inbound checks: DMARC records and alignment, blocklist names, greylist keys,
and the settings that choose them."""

from __future__ import annotations

import pytest
from mailstack.services.common.config import load_settings
from mailstack.services.smtp.checks.dmarc import aligned, organizational_domain, parse_record
from mailstack.services.smtp.checks.dnsbl import parse_zones, query_name
from mailstack.services.smtp.checks.greylist import Greylist, MemoryStore, network_of
from mailstack.services.smtp.checks.inbound import InboundChecks


def test_organizational_domain_from_the_public_suffix_list() -> None:
    # RFC 7489 §3.2
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.com.") == "example.com"
    assert organizational_domain("example.test") == "example.test"


def test_alignment_relaxed_and_strict() -> None:
    assert aligned("mail.example.com", "example.com", strict=False)
    assert not aligned("mail.example.com", "example.com", strict=True)
    assert aligned("EXAMPLE.com", "example.com", strict=True)
    assert not aligned("example.co.uk", "other.co.uk", strict=False)  # a public suffix is no organisation


def test_dmarc_record_parsing() -> None:
    record = parse_record(b"v=DMARC1; p=Quarantine; sp=reject; adkim=s; pct=30")
    assert record is not None
    assert (record.policy, record.subdomain_policy, record.strict_dkim, record.strict_spf, record.percent) == (
        "quarantine", "reject", True, False, 30,
    )  # fmt: skip
    assert parse_record(b"p=reject; v=DMARC1") is None  # v= must come first
    assert parse_record(b"v=DMARC2; p=reject") is None
    assert parse_record(b"v=DMARC1; p=bogus") is None
    bogus_with_rua = parse_record(b"v=DMARC1; p=bogus; rua=mailto:x@y.test")  # §6.6.3: acts as p=none
    assert bogus_with_rua is not None and bogus_with_rua.policy == "none"
    assert parse_record(b"v=DMARC1; p=reject; pct=500") is not None
    assert parse_record(b"v=DMARC1\xff; p=reject") is None


def test_dnsbl_names_and_zones() -> None:
    assert query_name("192.0.2.99", "bl.example") == "99.2.0.192.bl.example"  # RFC 5782 §2.1
    assert query_name("2001:db8:1:2:3:4:567:89ab", "bl.example").startswith("b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0")
    zones = parse_zones("zen.example=3, bl.example ,")
    assert [(z.zone, z.weight) for z in zones] == [("zen.example", 3), ("bl.example", 1)]
    with pytest.raises(ValueError, match="weight"):
        parse_zones("zen.example=lots")


async def test_greylist_keys_and_memory_store() -> None:
    assert network_of("192.0.2.200") == "192.0.2.0/24"
    assert network_of("2001:db8::1") == "2001:db8::/64"
    assert Greylist.key("192.0.2.1", "A@x.test", "b@y.test") == Greylist.key("192.0.2.9", "a@x.test", "B@y.test")
    assert Greylist.key("192.0.3.1", "a@x.test", "b@y.test") != Greylist.key("192.0.2.1", "a@x.test", "b@y.test")
    store = MemoryStore()
    assert await store.first_seen("k", 100.0, 10) == 100.0
    assert await store.first_seen("k", 105.0, 10) == 100.0
    assert await store.first_seen("k", 111.0, 10) == 111.0  # expired: a new first attempt


def test_settings_choose_the_checks() -> None:
    assert InboundChecks.from_settings(load_settings(env={})) is None  # all off by default
    with pytest.raises(ValueError, match="smtp_sender_auth"):
        InboundChecks.from_settings(load_settings(env={"MAILSTACK_SMTP_SENDER_AUTH": "strict"}))
    checks = InboundChecks.from_settings(load_settings(env={"MAILSTACK_SMTP_DNSBL_ZONES": "bl.example"}))
    assert checks is not None and checks.dnsbl is not None and checks.sender_auth is None
    with pytest.raises(ValueError, match="address"):
        InboundChecks.from_settings(
            load_settings(env={"MAILSTACK_SMTP_SENDER_AUTH": "annotate", "MAILSTACK_DNS_SERVERS": "ns.example"})
        )
