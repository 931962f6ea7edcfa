"""From/Sender as the mailstore's parser reads them, the refusals of ambiguous headers, and the
sliding-window sending limits (issue 13 §3, §6)."""

from __future__ import annotations

import pytest
from mailstack.services.mailstore.sender_rules import (
    HeaderSenders,
    RateLimited,
    SenderRefused,
    SendingLimiter,
    header_senders,
)


def senders(head: str, body: str = "body\r\n") -> HeaderSenders:
    return header_senders(f"{head}\r\n{body}".encode())


@pytest.mark.parametrize(
    ("from_value", "expected"),
    [
        ("a@shop.example", "a@shop.example"),
        ("Orders <a@shop.example>", "a@shop.example"),
        ('"Orders, Shop" <a@shop.example>', "a@shop.example"),
        ("=?utf-8?q?J=C3=B6rg?= <a@shop.example>", "a@shop.example"),
        ("a@shop.example (Orders)", "a@shop.example"),
        ('"ceo@bank.example" <a@shop.example>', "a@shop.example"),  # a display name, not the address
        ("A@Shop.Example", "A@Shop.Example"),
        ("jörg@shop.example", "jörg@shop.example"),
    ],
)
def test_one_from_address_is_read_as_envelope_reads_it(from_value: str, expected: str) -> None:
    assert senders(f"From: {from_value}\r\nSubject: s\r\n") == HeaderSenders(expected, "")


def test_sender_field_and_missing_from() -> None:
    assert senders("From: a@shop.example\r\nSender: b@shop.example\r\n").addresses == [
        "a@shop.example",
        "b@shop.example",
    ]
    assert senders("Subject: no from\r\n") == HeaderSenders("", "")
    assert header_senders(b"From: a@shop.example\r\nSubject: header only\r\n") == HeaderSenders("a@shop.example", "")
    assert header_senders(b"From: a@shop.example\nSubject: LF only\n\nbody\n").from_address == "a@shop.example"
    assert header_senders(b"From: a@shop.example\nSubject: mixed\n\r\nbody\r\n").from_address == "a@shop.example"
    assert header_senders(b"From: a@shop.example") == HeaderSenders("a@shop.example", "")
    # Folded From (RFC 5322 §2.2.3) is one field.
    assert senders("From: Orders\r\n <a@shop.example>\r\n").from_address == "a@shop.example"


@pytest.mark.parametrize(
    "head",
    [
        "From : ceo@bank.example\r\nFrom: a@shop.example\r\n",  # the raw trick
        "From\t: ceo@bank.example\r\n",
        "From: a@shop.example\r\nSubject : x\r\n",  # any field name with white space before ':'
        "From: a@shop.example\r\nFrom: ceo@bank.example\r\n",
        "From: a@shop.example\r\nSender: b@shop.example\r\nSender: ceo@bank.example\r\n",
        "From: a@shop.example, ceo@bank.example\r\n",
        "From: <a@shop.example>ceo@bank.example\r\n",
        "From: a@shop.example<ceo@bank.example>\r\n",
        "From: a@shop.example ceo@bank.example\r\n",
        "From: Friends: a@shop.example;\r\n",  # a group
        "From: Undisclosed:;\r\n",
        "From: <@bank.example:a@shop.example>\r\n",  # a source route
        "From: a\r\n",  # no domain
        "From: a@shop.example\r\nX Bad: y\r\nFrom: ceo@bank.example\r\n",  # a line that is no field
        "mbox line\r\nFrom: a@shop.example\r\n",
        "From: a@shop.example\r\nSender: ceo@bank.example, b@shop.example\r\n",
        "From: " + "x" * 70_000 + "@shop.example\r\n",
    ],
)
def test_ambiguous_or_multiple_senders_are_refused(head: str) -> None:
    with pytest.raises(SenderRefused):
        senders(head)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_counts_messages_in_a_sliding_window() -> None:
    clock = Clock()
    limits = SendingLimiter(60, 2, 0, clock)
    limits.take("smtp:a", 1)
    clock.now += 30
    limits.take("smtp:a", 1)
    with pytest.raises(RateLimited, match="retry in 31 s"):
        limits.take("smtp:a", 1)
    limits.take("smtp:b", 1)  # per key
    clock.now += 30  # the first message leaves the window
    limits.take("smtp:a", 1)
    with pytest.raises(RateLimited):
        limits.take("smtp:a", 1)


def test_limiter_counts_recipients_and_never_refuses_one_message_alone() -> None:
    clock = Clock()
    limits = SendingLimiter(60, 0, 10, clock)
    limits.take("token:t", 50)  # bigger than the limit on its own: passes once (else retried forever)
    with pytest.raises(RateLimited, match="50 recipients"):
        limits.take("token:t", 1)
    clock.now += 61
    limits.take("token:t", 6)
    with pytest.raises(RateLimited):
        limits.take("token:t", 5)
    limits.take("token:t", 4)


def test_limiter_off_and_idle_keys_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    off = SendingLimiter(3600, 0, 0)
    for _ in range(1000):
        off.take("smtp:a", 100)
    clock = Clock()
    monkeypatch.setattr("mailstack.services.mailstore.sender_rules.MAX_LIMIT_KEYS", 3)
    limits = SendingLimiter(10, 5, 0, clock)
    for i in range(4):
        limits.take(f"smtp:{i}", 1)
    clock.now += 11
    limits.take("smtp:new", 1)
    assert set(limits._sent) == {"smtp:new"}
