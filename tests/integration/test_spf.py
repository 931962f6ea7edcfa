"""SPF (RFC 7208) against a real DNS server on 127.0.0.1: results, mechanisms, macros and limits."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from mailstack.services.smtp.checks.dns import Resolver
from mailstack.services.smtp.checks.spf import PermError, SpfContext, SpfResult, check_host, expand

from tests.fixtures.dns_server import DnsServer

IP = "192.0.2.3"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def resolver(dns: DnsServer, timeout: float = 2.0) -> Resolver:
    return Resolver(dns.address, timeout)


async def spf(dns: DnsServer, domain: str, ip: str = IP, sender: str = "", wait: float = 2.0) -> SpfResult:
    verdict = await check_host(resolver(dns, wait), ip, domain, sender or f"user@{domain}", "helo.test")
    return verdict.result


# ---------------------------------------------------------------- results (§2.6)


@pytest.mark.parametrize(
    ("record", "result"),
    [
        (f"v=spf1 ip4:{IP} -all", SpfResult.PASS),
        ("v=spf1 ip4:192.0.2.0/24 -all", SpfResult.PASS),
        ("v=spf1 ip4:198.51.100.1 -all", SpfResult.FAIL),
        ("v=spf1 ip4:198.51.100.1 ~all", SpfResult.SOFTFAIL),
        ("v=spf1 ip4:198.51.100.1 ?all", SpfResult.NEUTRAL),
        ("v=spf1 ip4:198.51.100.1", SpfResult.NEUTRAL),  # §4.7: nothing matched, no redirect
        (f"v=spf1 -ip4:{IP} +all", SpfResult.FAIL),  # the first match decides
        ("V=SPF1 IP4:192.0.2.3 -ALL", SpfResult.PASS),  # names are case-insensitive
        ("v=spf1 foo:bar -all", SpfResult.PERMERROR),  # unknown mechanism
        ("v=spf1 ip4:192.0.2.300 -all", SpfResult.PERMERROR),
        ("v=spf1 ip4:192.0.2.3/33 -all", SpfResult.PERMERROR),
        ("v=spf1 a: -all", SpfResult.PERMERROR),
        ("v=spf1 redirect=a.test redirect=b.test", SpfResult.PERMERROR),
        ("v=spf1 unknown-modifier=x ip4:192.0.2.3 -all", SpfResult.PASS),  # §6: unknown modifiers ignored
        ("v=spf10 ip4:192.0.2.3", SpfResult.NONE),  # not version 1
    ],
)
async def test_results_of_simple_records(dns: DnsServer, record: str, result: SpfResult) -> None:
    dns.txt("sender.test", record)
    assert await spf(dns, "sender.test") == result


async def test_no_record_no_domain_and_not_a_domain_are_none(dns: DnsServer) -> None:
    dns.txt("nospf.test", "google-site-verification=abc")
    assert await spf(dns, "nospf.test") == SpfResult.NONE
    assert await spf(dns, "nxdomain.test") == SpfResult.NONE
    assert await spf(dns, "localhost") == SpfResult.NONE  # §4.3: not a multi-label name
    assert await spf(dns, "a" * 64 + ".test") == SpfResult.NONE
    assert await spf(dns, "nospf.test", ip="") == SpfResult.NONE  # no client address to check


async def test_two_spf_records_are_a_permerror(dns: DnsServer) -> None:
    dns.txt("two.test", "v=spf1 -all", "v=spf1 +all")
    assert await spf(dns, "two.test") == SpfResult.PERMERROR


async def test_record_in_several_strings_is_joined(dns: DnsServer) -> None:
    # §3.3: one TXT record of many character-strings is one record, joined without spaces
    dns.add("split.test", "TXT", '"v=spf1 ip4:" "192.0.2.3 -all"')
    assert await spf(dns, "split.test") == SpfResult.PASS


# ---------------------------------------------------------------- mechanisms (§5)


async def test_a_and_mx_with_prefix_lengths(dns: DnsServer) -> None:
    dns.add("host.test", "A", "192.0.2.77")
    dns.txt("a.test", "v=spf1 a:host.test/24 -all")
    dns.txt("a32.test", "v=spf1 a:host.test -all")
    dns.add("mxs.test", "MX", "10 host.test.")
    dns.txt("mxs.test", "v=spf1 mx/24 -all")
    assert await spf(dns, "a.test") == SpfResult.PASS
    assert await spf(dns, "a32.test") == SpfResult.FAIL
    assert await spf(dns, "mxs.test") == SpfResult.PASS


async def test_ipv6_client_and_ipv4_mapped(dns: DnsServer) -> None:
    dns.txt("six.test", "v=spf1 ip6:2001:db8::/32 ip4:192.0.2.0/24 -all")
    assert await spf(dns, "six.test", ip="2001:db8::cb01") == SpfResult.PASS
    assert await spf(dns, "six.test", ip="2001:db9::1") == SpfResult.FAIL
    assert await spf(dns, "six.test", ip="::ffff:192.0.2.9") == SpfResult.PASS  # §5: mapped = IPv4
    dns.add("v6host.test", "AAAA", "2001:db8::5")
    dns.txt("a6.test", "v=spf1 a:v6host.test//64 -all")
    assert await spf(dns, "a6.test", ip="2001:db8::99") == SpfResult.PASS


async def test_include_matches_only_on_pass(dns: DnsServer) -> None:
    dns.txt("provider.test", f"v=spf1 ip4:{IP} -all")
    dns.txt("strict.test", "v=spf1 -all")
    dns.txt("inc.test", "v=spf1 include:provider.test -all")
    dns.txt("incfail.test", "v=spf1 include:strict.test ~all")  # fail inside: no match, go on
    dns.txt("incnone.test", "v=spf1 include:nothing.test -all")  # §5.2: none -> permerror
    assert await spf(dns, "inc.test") == SpfResult.PASS
    assert await spf(dns, "incfail.test") == SpfResult.SOFTFAIL
    assert await spf(dns, "incnone.test") == SpfResult.PERMERROR


async def test_redirect(dns: DnsServer) -> None:
    dns.txt("target.test", f"v=spf1 ip4:{IP} -all")
    dns.txt("redir.test", "v=spf1 redirect=target.test")
    dns.txt("redirnone.test", "v=spf1 redirect=nothing.test")
    dns.txt("redirlate.test", "v=spf1 ip4:198.51.100.0/24 redirect=target.test")  # used: nothing matched
    dns.txt("redirall.test", "v=spf1 -all redirect=target.test")  # §6.1: ignored when "all" is present
    assert await spf(dns, "redir.test") == SpfResult.PASS
    assert await spf(dns, "redirnone.test") == SpfResult.PERMERROR
    assert await spf(dns, "redirlate.test") == SpfResult.PASS
    assert await spf(dns, "redirall.test") == SpfResult.FAIL


async def test_exists_with_macros_and_ptr(dns: DnsServer) -> None:
    dns.add("3.2.0.192.user.allow.test", "A", "127.0.0.2")
    dns.txt("ex.test", "v=spf1 exists:%{ir}.%{l}.allow.test -all")
    assert await spf(dns, "ex.test", sender="user@ex.test") == SpfResult.PASS
    assert await spf(dns, "ex.test", sender="other@ex.test") == SpfResult.FAIL
    dns.add("3.2.0.192.in-addr.arpa", "PTR", "mail.ptr.test.")
    dns.add("mail.ptr.test", "A", IP)
    dns.txt("ptr.test", "v=spf1 ptr -all")
    assert await spf(dns, "ptr.test") == SpfResult.PASS


# ---------------------------------------------------------------- macros (§7.4, the RFC's own examples)


@pytest.mark.parametrize(
    ("spec", "expanded"),
    [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ],
)
def test_macro_examples_of_the_rfc(spec: str, expanded: str) -> None:
    address = ipaddress.ip_address("192.0.2.3")
    context = SpfContext(Resolver("127.0.0.1:9", 1.0), address, "strong-bad@email.example.com", "helo.example.com")
    assert expand(spec, context, "email.example.com") == expanded


def test_macro_ipv6_nibbles_and_bad_macros() -> None:
    context = SpfContext(Resolver("127.0.0.1:9", 1.0), ipaddress.ip_address("2001:db8::cb01"), "a@b.example", "h")
    assert expand("%{ir}.%{v}._spf.%{d2}", context, "email.example.com") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )
    for bad in ("%{x}", "%{c}", "%q", "abc%", "%{d0}"):
        with pytest.raises(PermError):
            expand(bad, context, "b.example")


# ---------------------------------------------------------------- limits (§4.6.4) and errors


async def test_include_loop_stops_at_ten_lookups(dns: DnsServer) -> None:
    dns.txt("loop1.test", "v=spf1 include:loop2.test -all")
    dns.txt("loop2.test", "v=spf1 include:loop1.test -all")
    assert await spf(dns, "loop1.test") == SpfResult.PERMERROR
    assert dns.asked("TXT") <= 12  # the first record and at most ten more, never an endless walk


async def test_eleven_dns_mechanisms_are_a_permerror(dns: DnsServer) -> None:
    for i in range(11):
        dns.add(f"h{i}.test", "A", "198.51.100.1")
    ten = " ".join(f"a:h{i}.test" for i in range(10))
    dns.txt("ten.test", f"v=spf1 {ten} ip4:{IP} -all")
    dns.txt("eleven.test", f"v=spf1 {ten} a:h10.test ip4:{IP} -all")
    assert await spf(dns, "ten.test") == SpfResult.PASS
    assert await spf(dns, "eleven.test") == SpfResult.PERMERROR


async def test_more_than_two_void_lookups_are_a_permerror(dns: DnsServer) -> None:
    dns.txt("void2.test", f"v=spf1 a:none1.test a:none2.test ip4:{IP} -all")
    dns.txt("void3.test", f"v=spf1 a:none1.test a:none2.test a:none3.test ip4:{IP} -all")
    assert await spf(dns, "void2.test") == SpfResult.PASS
    assert await spf(dns, "void3.test") == SpfResult.PERMERROR


async def test_more_than_ten_mx_names_is_a_permerror(dns: DnsServer) -> None:
    dns.add("manymx.test", "MX", *(f"{i} mx{i}.manymx.test." for i in range(11)))
    dns.txt("manymx.test", "v=spf1 mx -all")
    assert await spf(dns, "manymx.test") == SpfResult.PERMERROR
    assert dns.asked("A") == 0  # refused before a single address lookup


async def test_huge_txt_records_are_bounded(dns: DnsServer) -> None:
    # Answers too big for UDP come over TCP; an SPF record over 4 KiB is refused, other TXT ignored.
    dns.txt("huge.test", "v=spf1 " + " ".join(f"ip4:198.51.{i // 250}.{i % 250}" for i in range(300)) + " -all")
    dns.txt("noise.test", "x" * 8000, f"v=spf1 ip4:{IP} -all")
    assert await spf(dns, "huge.test") == SpfResult.PERMERROR
    dns.txt("huger.test", "v=spf1 " + "a" * 20000 + " -all")  # 20 KiB over TCP, refused unparsed
    assert await spf(dns, "huger.test") == SpfResult.PERMERROR
    assert await spf(dns, "noise.test") == SpfResult.PASS


async def test_dns_down_or_servfail_is_a_temperror(dns: DnsServer) -> None:
    dns.txt("down.test", f"v=spf1 ip4:{IP} -all")
    dns.servfail.add("down.test")
    assert await spf(dns, "down.test") == SpfResult.TEMPERROR
    dns.servfail.clear()
    dns.txt("inc-down.test", "v=spf1 include:slow.test -all")
    dns.silent = True
    assert await spf(dns, "inc-down.test", wait=0.3) == SpfResult.TEMPERROR
