"""The base subject (RFC 5256 §2.1) and i;ascii-casemap (RFC 4790 §9.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.message.base_subject import base_subject, casemap


@pytest.mark.parametrize(
    ("raw", "base", "reply"),
    [
        (b"hello", "hello", False),
        (b"Re: hello", "hello", True),
        (b"RE: re: Re:hello", "hello", True),
        (b"Fwd: hello", "hello", True),
        (b"FW: hello", "hello", True),
        (b"Re[2]: hello", "hello", True),  # subj-refwd = "re" *WSP [subj-blob] ":"
        (b"Re [2] : hello", "hello", True),
        (b"hello (fwd)", "hello", True),  # subj-trailer
        (b"hello (FWD) (fwd)  ", "hello", True),
        (b"[PATCH] Re: hello", "hello", True),  # *subj-blob subj-refwd
        (b"[list] hello", "hello", False),  # step 4: a leading blob goes when text remains
        (b"[list]", "[list]", False),  # ... and stays when it is the whole subject
        (b"[a] [b] hello", "hello", False),
        (b"[fwd: hello]", "hello", True),  # step 6
        (b"Re: [fwd: Re: hello (fwd)]", "hello", True),
        (b"[Fwd: [list] Re: hello]", "hello", True),
        (b"Re:", "", True),
        (b"", "", False),
        (b"  \t hello \t  world ", "hello world", False),  # step 1: spaces collapsed
        (b"hello\r\n world", "hello world", False),  # a continuation is a space
        (b"=?utf-8?q?Re=3A_caf=C3=A9?=", "café", True),  # encoded words first
        (b"=?iso-8859-1?q?R=E9sum=E9?= (fwd)", "Résumé", True),
        (b"Rebate", "Rebate", False),  # "re" not followed by ":"
        (b"Fwdx: hello", "Fwdx: hello", False),
    ],
)
def test_base_subject(raw: bytes, base: str, reply: bool) -> None:
    assert base_subject(raw) == (base, reply)


def test_no_subject() -> None:
    assert base_subject(None) == ("", False)


def test_casemap_maps_ascii_letters_only() -> None:
    # RFC 4790 §9.2: a-z to A-Z; other octets (UTF-8 of é) compared as they are
    assert casemap("abcXYZ é") == "ABCXYZ é".encode()
    assert casemap("é") != casemap("É")


_subjects = st.text(alphabet=st.sampled_from(list("aB :[]()fwdReFW\t")), max_size=30)


@given(_subjects)
def test_base_subject_is_a_fixed_point(text: str) -> None:
    # the base subject of a base subject is itself: extraction removes everything it ever removes
    base, _ = base_subject(text.encode())
    assert base_subject(base.encode())[0] == base


@given(_subjects)
def test_a_reply_prefix_never_changes_the_base(text: str) -> None:
    base, _ = base_subject(text.encode())
    assert base_subject(b"Re: " + text.encode()) == (base, True)
