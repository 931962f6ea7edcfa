"""Units of sending: MIME composition, raw completion, DSN status codes, retry schedule, tokens,
the static resolver, the DNS resolver against a stub DNS server on loopback, DKIM round trip."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from typing import cast

import dkim
import dns.message
import dns.rcode
import dns.rrset
import pytest
from mailstack.message import compose
from mailstack.message.dkim_sign import DkimKey, dns_record, generate_key, parse_keys, sign
from mailstack.message.dsn import status_code
from mailstack.services.mailstore.sending import Sending, hash_token, retry_delays
from mailstack.services.outbound.resolver import DnsResolver, MxHost, ResolveError, StaticResolver, open_resolver
from mailstack.storage.queue.base import TokenRecord
from mailstack.v1 import send_pb2 as spb


def test_structured_message_escapes_and_structure() -> None:
    message = spb.StructuredMessage(to=["Zoë <z@x.test>"], bcc=["hidden@y.test"], subject="Grüße", text="plain")
    setattr(message, "from", "a@shop.test")
    built = compose.build(message, now=1_800_000_000)
    assert built.recipients == ["z@x.test", "hidden@y.test"] and built.from_address == "a@shop.test"
    assert built.data.isascii()  # RFC 2047 encoded words, no raw UTF-8 in headers
    assert b"Bcc" not in built.data and b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=" in built.data
    parsed = email.message_from_bytes(built.data, policy=email.policy.default)
    assert parsed.get_content_type() == "text/plain" and parsed["Subject"] == "Grüße"
    assert parsed["Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"to": ["x@y.test"]}, "from is required"),
        ({"from": "a@shop.test"}, "at least one of to, cc, bcc"),
        ({"from": "not-an-address", "to": ["x@y.test"]}, "invalid from"),
        ({"from": "a@shop.test", "to": ["x@y.test"], "headers": [spb.ExtraHeader(name="To", value="v")]},
         "cannot be set"),
        ({"from": "a@shop.test", "to": ["x@y.test"], "headers": [spb.ExtraHeader(name="X-A", value="a\r\nB: c")]},
         "line breaks"),
    ],
)  # fmt: skip
def test_structured_message_refusals(fields: dict[str, object], error: str) -> None:
    sender = fields.pop("from", "")
    message = spb.StructuredMessage(**fields)  # type: ignore[arg-type]
    setattr(message, "from", sender)
    with pytest.raises(compose.ComposeError, match=error):
        compose.build(message)


def test_raw_message_gets_message_id_and_date_and_loses_bcc() -> None:
    raw = b"From: a@shop.test\r\nTo: b@x.test\r\nBcc: c@x.test,\r\n d@x.test\r\nSubject: s\r\n\r\nbody\r\n"
    info = compose.raw_info(raw)
    assert info.recipients == ["b@x.test", "c@x.test", "d@x.test"] and not info.message_id
    data, message_id = compose.complete_raw(raw, info)
    assert data.startswith(f"Message-ID: <{message_id}>\r\nDate: ".encode())
    assert b"Bcc" not in data and b"d@x.test" not in data and data.endswith(b"Subject: s\r\n\r\nbody\r\n")
    with pytest.raises(compose.ComposeError):
        compose.raw_info(b"To: b@x.test\r\n\r\nno from\r\n")


def test_dsn_status_codes() -> None:
    assert status_code("550 5.1.1 no such user") == "5.1.1"
    assert status_code("554 rejected") == "5.0.0"
    assert status_code("delivery time expired; last error: 451 busy") == "4.4.7"


def test_retry_schedule_and_token_scope() -> None:
    assert retry_delays("60, 300,900") == [60.0, 300.0, 900.0]
    with pytest.raises(ValueError):
        retry_delays("")
    token = TokenRecord("shop", ("shop.test",), ("ceo@bank.test",), 0)
    assert Sending.may_send_as(token, "Orders@Shop.Test")
    assert Sending.may_send_as(token, "ceo@bank.test") and not Sending.may_send_as(token, "cfo@bank.test")
    assert not Sending.may_send_as(token, "x@evil-shop.test")
    assert hash_token("mst_a") != hash_token("mst_b") and len(hash_token("x")) == 64


async def test_static_resolver() -> None:
    resolver = StaticResolver.parse("a.test=127.0.0.1:2525,a.test=[::1]:2526,*=127.0.0.1:25")
    assert await resolver.mx_hosts("A.TEST") == [MxHost("127.0.0.1", 2525), MxHost("::1", 2526)]
    assert await resolver.mx_hosts("other.test") == [MxHost("127.0.0.1", 25)]
    with pytest.raises(ResolveError) as err:
        await StaticResolver.parse("a.test=h:1").mx_hosts("b.test")
    assert err.value.permanent
    with pytest.raises(ValueError):
        open_resolver("static:a.test=nohost")


class StubDns(asyncio.DatagramProtocol):
    """A DNS server on 127.0.0.1 answering from a zone dict: (name, type) -> rdata texts."""

    def __init__(self, zone: dict[tuple[str, str], list[str]], nxdomain: set[str]) -> None:
        self.zone = zone
        self.nxdomain = nxdomain
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        if name in self.nxdomain:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif (name, rdtype) in self.zone:
            response.answer.append(dns.rrset.from_text_list(name, 60, "IN", rdtype, self.zone[(name, rdtype)]))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def stub_dns() -> AsyncIterator[DnsResolver]:
    zone = {
        ("mx.test.", "MX"): ["20 backup.mx.test.", "10 primary.mx.test."],
        ("nullmx.test.", "MX"): ["0 ."],
        ("bare.test.", "A"): ["127.0.0.1"],
    }
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: StubDns(zone, {"gone.test."}), local_addr=("127.0.0.1", 0)
    )
    resolver = DnsResolver(lifetime=2.0)
    resolver._resolver.nameservers = ["127.0.0.1"]
    resolver._resolver.port = transport.get_extra_info("sockname")[1]
    yield resolver
    transport.close()


async def test_dns_resolver_mx_order_implicit_mx_null_mx_nxdomain(stub_dns: DnsResolver) -> None:
    assert await stub_dns.mx_hosts("mx.test") == [MxHost("primary.mx.test"), MxHost("backup.mx.test")]
    assert await stub_dns.mx_hosts("bare.test") == [MxHost("bare.test")]  # RFC 5321 §5.1 implicit MX
    for domain, code in (("nullmx.test", "556 5.1.10"), ("gone.test", "550 5.1.2")):
        with pytest.raises(ResolveError) as err:
            await stub_dns.mx_hosts(domain)
        assert err.value.permanent and err.value.reply.startswith(code)


def test_dkim_sign_verifies_and_keygen_prints_the_record(tmp_path: object) -> None:
    pem, public = generate_key(1024)
    message = b"From: a@shop.test\r\nTo: b@x.test\r\nSubject: s\r\nDate: Fri, 15 Jan 2027 08:00:00 +0000\r\n\r\nhi\r\n"
    signed = sign(message, DkimKey("shop.test", "s1", pem))
    assert signed.startswith(b"DKIM-Signature: ") and signed.endswith(message)
    record = dns_record("shop.test", "s1", public)
    assert record.startswith('s1._domainkey.shop.test. IN TXT (\n    "v=DKIM1; k=rsa; p=')
    txt = "".join(record.split('"')[1::2]).encode()  # the quoted strings, joined as DNS does
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: txt)
    assert not dkim.verify(signed.replace(b"hi\r\n", b"ho\r\n"), dnsfunc=lambda name, timeout=5: txt)
    with pytest.raises(ValueError):
        parse_keys("shop.test=nokeypath")
