"""Dovecot's passwd-file lines as the import reads them (user:password:uid:gid:gecos:home:shell:extra)."""

from __future__ import annotations

import pytest

from mailstack.cli.passwd_file import parse_passwd_file


@pytest.mark.parametrize(
    ("extra", "quota_bytes", "quota_messages"),
    [
        ("userdb_quota_rule=*:storage=1G", 1 << 30, None),
        ("quota_rule=*:storage=1024", 1 << 20, None),  # storage= without a unit is KiB (Dovecot)
        ("userdb_quota_rule=*:storage=512b", 512, None),
        ("userdb_quota_rule=*:bytes=1000", 1000, None),  # bytes= is bytes
        ("userdb_quota_rule=*:storage=2M:messages=300", 2 << 20, 300),
        ("userdb_quota_rule=*:messages=10 userdb_quota_rule2=*:storage=1T", 1 << 40, 10),
        ("userdb_mail=maildir:~/Maildir nopassword", None, None),  # no rule: no limit set
        ("userdb_quota_rule=*:storage=0:messages=0", 0, 0),
        ("", None, None),
    ],
)
def test_the_global_quota_rule_becomes_the_quota(
    extra: str, quota_bytes: int | None, quota_messages: int | None
) -> None:
    parsed = parse_passwd_file(f"a@example.test:{{PLAIN}}x:1000:1000::/home/a::{extra}\n")
    assert parsed.errors == []
    [entry] = parsed.entries
    assert (entry.user, entry.password_hash) == ("a@example.test", "{PLAIN}x")
    assert (entry.quota_bytes, entry.quota_messages) == (quota_bytes, quota_messages)


def test_rules_we_cannot_honour_are_reported_not_dropped() -> None:
    text = "a@example.test:{PLAIN}x::::::userdb_quota_rule=Trash:storage=+100M userdb_quota_rule2=*:storage=10%\n"
    [entry] = parse_passwd_file(text).entries
    assert entry.quota_bytes is None
    assert any("Trash" in n for n in entry.notes) and any("10%" in n for n in entry.notes)


def test_short_lines_comments_and_domains() -> None:
    text = "# comment\n\nbob:{PLAIN}x\ncarol@other.test:{PLAIN}y\nno-password\n:{PLAIN}z\ndave:\n"
    parsed = parse_passwd_file(text, "example.test")
    assert [e.user for e in parsed.entries] == ["bob@example.test", "carol@other.test"]
    assert [e.split(":")[0] for e in parsed.errors] == ["line 5", "line 6", "line 7"]
    assert parse_passwd_file("bob:{PLAIN}x\n").errors == ["line 1: 'bob' has no domain: give --domain"]
