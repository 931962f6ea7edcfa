"""The transcript runner's own rules (pattern matching, escapes), so that a script cannot pass by accident."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from tests.fixtures.imap_script import Connection, Runner, ScriptError, parse, render


def _runner() -> Runner:
    return Runner(port=0, accounts=lambda: "u@x", append=lambda *a: None, password="p")


def test_wildcards_and_captures() -> None:
    r = _runner()
    pattern, names = r.compile("* OK [UIDVALIDITY ${v}] $*")
    m = pattern.match("* OK [UIDVALIDITY 1234] UIDs valid")
    assert m and names == ["v"] and m.group("v") == "1234"
    r.values["v"] = "1234"
    again, _ = r.compile("* OK [UIDVALIDITY ${v}] $*")
    assert not again.match("* OK [UIDVALIDITY 99] x")
    assert not r.compile("a OK")[0].match("a OK done")  # whole line, not a prefix
    assert r.compile("* FLAGS ($Forwarded)")[0].match("* FLAGS ($Forwarded)")  # $ alone is literal


def test_render_escapes_control_octets() -> None:
    assert render(b"{3}\r\na\x00\\") == "{3}\\r\\na\\x00\\"


def test_parse_rejects_unknown_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.imap"
    bad.write_text("X: nothing\n")
    with pytest.raises(ValueError):
        parse(bad)
    good = tmp_path / "good.imap"
    good.write_text("# c\n@login 2\nC2: a NOOP\nS2: a OK $*\n!: * BYE $*\n")
    steps = parse(good).steps
    assert [(s.kind, s.conn) for s in steps] == [("@", 1), ("C", 2), ("S", 2), ("!", 1)]


def test_value_directives() -> None:
    r = _runner()
    r.values.update(user="u@x", password="p")
    r.set_base64("plain \\x00${user}\\x00${password}", "t")
    assert r.values["plain"] == "AHVAeABw"  # base64 of b"\0u@x\0p"
    r.set_repeat("pad 3 ab", "t")
    assert r.values["pad"] == "ababab"


def test_also_checks_the_line_the_last_s_matched(tmp_path: Path) -> None:
    script = tmp_path / "also.imap"
    script.write_text("A: * 1 FETCH ($*UID ${u}$*)\nA: * 1 FETCH ($*FLAGS ()$*)\n")
    first, second = parse(script).steps
    assert first.kind == "A"
    r = _runner()
    r.conns[1] = cast(Connection, SimpleNamespace(matched="* 1 FETCH (UID 7 MODSEQ (3))"))
    r.also(first, "t")
    assert r.values["u"] == "7"
    with pytest.raises(ScriptError):
        r.also(second, "t")
