"""lmtp_trusted_networks parsing and matching (pure)."""

from __future__ import annotations

import re

import pytest
from mailstack.services.smtp.lmtp import is_trusted, per_recipient, trusted_networks


def test_networks_and_addresses() -> None:
    networks = trusted_networks(" 127.0.0.1/32, ::1/128,10.1.2.3/8 ,")
    assert [str(n) for n in networks] == ["127.0.0.1/32", "::1/128", "10.0.0.0/8"]
    assert is_trusted("127.0.0.1", networks) and is_trusted("::1", networks) and is_trusted("10.9.9.9", networks)
    assert is_trusted("::ffff:10.0.0.7", networks)  # an IPv4 client on a dual-stack socket
    assert not is_trusted("127.0.0.2", networks) and not is_trusted("192.0.2.1", networks)
    assert not is_trusted("", networks) and not is_trusted("not-an-ip", networks)
    assert not is_trusted("127.0.0.1", trusted_networks(""))  # nothing trusted: nobody gets in


def test_a_bad_network_names_the_setting() -> None:
    with pytest.raises(ValueError, match=re.escape("lmtp_trusted_networks: not a network: '10.0.0.0/33'")):
        trusted_networks("127.0.0.1/32,10.0.0.0/33")


def test_one_reply_becomes_one_per_recipient() -> None:
    assert (
        per_recipient("451 4.3.0 Temporary storage failure", 3).split("\r\n")
        == ["451 4.3.0 Temporary storage failure"] * 3
    )
    assert per_recipient("250 2.0.0 a\r\n452 4.2.2 b", 2) == "250 2.0.0 a\r\n452 4.2.2 b"
    assert per_recipient("552 Message too big", 2) == "552 5.3.4 Message too big\r\n552 5.3.4 Message too big"
