"""DNS blocklists and greylisting on the MX port, end to end: smtplib against a running SMTP
service, the lists answered by a DNS server on 127.0.0.1, greylisting state in this process or in
a real Redis shared by two SMTP replicas."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.services.smtp.server import SmtpServer

from tests.e2e.smtp_support import ALICE, BOB, smtp_stack
from tests.fixtures.dns_server import DnsServer

MESSAGE = b"From: x@remote.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    zone = {
        "1.0.0.127.zen.test": {"A": ["127.0.0.2"]},
        "1.0.0.127.weak.test": {"A": ["127.0.0.4"]},
        "1.0.0.127.refuses-us.test": {"A": ["127.255.255.254"]},  # "you may not query", not a listing
    }
    with DnsServer(zone) as server:
        yield server


def send(port: int, recipient: str = ALICE, sender: str = "x@remote.test") -> tuple[int, str]:
    """(reply code, text) of the transaction: 250 when delivered, else the first refusal."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.remote.test")
        try:
            client.sendmail(sender, [recipient], MESSAGE)
        except smtplib.SMTPRecipientsRefused as err:
            code, text = err.recipients[recipient]
            return code, text.decode()
        return 250, ""


async def attempt(port: int, recipient: str = ALICE, sender: str = "x@remote.test") -> tuple[int, str]:
    return await asyncio.to_thread(send, port, recipient, sender)


# ---------------------------------------------------------------- DNS blocklists (RFC 5782)


async def test_listed_client_is_refused_at_rcpt_with_the_list_names(tmp_path: Path, dns: DnsServer) -> None:
    zones = "zen.test=2,weak.test=1,refuses-us.test=5,clean.test=5"
    async with smtp_stack(tmp_path, dns_servers=dns.address, smtp_dnsbl_zones=zones, smtp_dnsbl_threshold=3) as stack:
        code, text = await attempt(stack.ports["smtp"])
        assert code == 554 and text.startswith("5.7.1"), text
        assert "zen.test" in text and "weak.test" in text and "refuses-us" not in text and "clean" not in text
        assert await stack.count() == 0
        assert dns.asked() == 4  # one lookup per list, all at once


async def test_below_the_threshold_and_lists_down_pass(tmp_path: Path, dns: DnsServer) -> None:
    async with smtp_stack(
        tmp_path, dns_servers=dns.address, smtp_dnsbl_zones="zen.test=2,refuses-us.test=9", smtp_dnsbl_threshold=3,
        dns_timeout_ms=300,
    ) as stack:  # fmt: skip
        assert await attempt(stack.ports["smtp"]) == (250, "")
        dns.silent = True  # a list that cannot be asked does not stop mail
        assert await attempt(stack.ports["smtp"]) == (250, "")
        assert await stack.count() == 2


# ---------------------------------------------------------------- greylisting


async def test_greylisting_in_process(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, smtp_greylist_delay=1, smtp_greylist_retry_window=3) as stack:
        port = stack.ports["smtp"]
        code, text = await attempt(port)
        assert (code, text[:5]) == (451, "4.7.1"), text
        assert (await attempt(port))[0] == 451  # too early
        await asyncio.sleep(1.2)
        assert await attempt(port) == (250, "")
        assert await attempt(port) == (250, "")  # remembered
        assert (await attempt(port, recipient=BOB))[0] == 451  # another triplet
        assert (await attempt(port, sender="other@remote.test"))[0] == 451
        assert await stack.count() == 2
        # A first attempt never retried is forgotten after the retry window.
        await asyncio.sleep(3.2)
        assert (await attempt(port, recipient=BOB))[0] == 451


@pytest.mark.slow
async def test_greylisting_state_is_shared_by_replicas_through_redis(tmp_path: Path, redis_url: str) -> None:
    async with smtp_stack(tmp_path, smtp_greylist_delay=1, smtp_greylist_url=redis_url) as stack:
        replica = SmtpServer(
            stack.settings.replace(mailstore_addr=stack.mailstore.address, smtp_greylist_url=redis_url)
        )
        await replica.start()
        try:
            other = next(int(a.rsplit(":", 1)[1]) for name, a in replica.listeners if name == "smtp")
            assert (await attempt(stack.ports["smtp"]))[0] == 451
            assert (await attempt(other))[0] == 451  # the replica knows the first attempt: still too early
            started = time.monotonic()
            await asyncio.sleep(1.2)
            assert await attempt(other) == (250, "")  # and lets the retry through on the other replica
            assert time.monotonic() - started < 60
            assert await stack.count() == 1
        finally:
            await replica.stop(1.0)
