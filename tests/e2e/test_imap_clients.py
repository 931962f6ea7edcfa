"""Real, unmodified clients against the IMAP server (what ../shared/clients/ proves against
Dovecot): curl, mbsync (isync) both ways, mutt in batch mode under a pty."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.imap_server import PASSWORD, ImapEnv, RawImap, imap_env, message

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    for tool in ("curl", "mbsync", "mutt", "script"):
        assert shutil.which(tool), f"{tool} missing: run scripts/install_clients.sh"
    with imap_env(tmp_path_factory.mktemp("imap-clients"), allow_plaintext_auth=False) as e:
        yield e


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=90, env=env)


def _subjects(env: ImapEnv, user: str, mailbox: str = "INBOX") -> dict[str, bytes]:
    """Subject -> FLAGS line of every message, read with a raw session."""
    raw = RawImap(env.port(tls=True), tls=__import__("ssl").create_default_context(cafile=env.cert))
    raw.login(user)
    raw.command("s", f"EXAMINE {mailbox}")
    out = {}
    for line in raw.command("f", "FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"):
        match = re.match(rb"\* \d+ FETCH \((FLAGS \([^)]*\))", line)
        if match:
            out_flags = match.group(1)
        elif line.startswith(b"Subject: "):
            out[line[9:].decode()] = out_flags
    raw.close()
    return out


def test_curl(env: ImapEnv, tmp_path: Path) -> None:
    user = env.new_account()
    env.deliver(user, message("curl one"))
    base = ["curl", "-sS", "--ssl-reqd", "--cacert", env.cert, "--user", f"{user}:{PASSWORD}"]
    url = f"imap://localhost:{env.port()}"
    listing = _run(*base, f"{url}/")
    assert listing.returncode == 0 and b'* LIST (\\HasNoChildren \\Sent) "/" Sent' in listing.stdout
    search = _run(*base, f"{url}/INBOX?ALL")
    assert search.returncode == 0 and search.stdout.strip() == b"* SEARCH 1"
    header = _run(*base, f"{url}/INBOX;UID=1;SECTION=HEADER.FIELDS%20(SUBJECT)")
    assert header.stdout.strip() == b"Subject: curl one"
    body = _run(*base, f"{url}/INBOX;UID=1")  # UID FETCH 1 BODY[] (sets \Seen)
    assert body.returncode == 0 and b"Subject: curl one" in body.stdout
    flags = _run(*base, f"{url}/INBOX", "-X", "UID FETCH 1:* (FLAGS)")
    assert b"* 1 FETCH (UID 1 FLAGS (\\Seen))" in flags.stdout
    upload = tmp_path / "m.eml"
    upload.write_bytes(message("curl upload"))
    appended = _run(*base, f"{url}/INBOX", "--upload-file", str(upload))  # APPEND, synchronizing literal
    assert appended.returncode == 0, appended.stderr
    implicit = _run(*base, f"imaps://localhost:{env.port(tls=True)}/INBOX;MAILINDEX=2")
    assert b"Subject: curl upload" in implicit.stdout
    assert set(_subjects(env, user)) == {"curl one", "curl upload"}


def test_mbsync_pulls_and_pushes(env: ImapEnv, tmp_path: Path) -> None:
    user = env.new_account()
    env.deliver(user, message("mbsync one"))
    local = tmp_path / "local"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"IMAPAccount acct\nHost localhost\nPort {env.port()}\nUser {user}\nPass {PASSWORD}\n"
        f"SSLType STARTTLS\nCertificateFile {env.cert}\nAuthMechs PLAIN LOGIN\n\n"
        "IMAPStore remote\nAccount acct\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel ch\nFar :remote:\nNear :local:\nPatterns INBOX mbsync-test\nCreate Both\nExpunge Both\nSyncState *\n"
    )
    pull = _run("mbsync", "-c", str(config), "-D", "-a")
    assert pull.returncode == 0, pull.stdout[-3000:]
    pulled = [p for p in (local / "INBOX").glob("*/*") if b"Subject: mbsync one" in p.read_bytes()]
    assert len(pulled) == 1
    # local changes: mark seen, a new message, a new folder with a message
    pulled[0].rename(local / "INBOX" / "cur" / (pulled[0].name.split(":2,")[0] + ":2,S"))
    (local / "INBOX" / "new" / "1.local2.host").write_bytes(message("mbsync two"))
    for sub in ("new", "cur", "tmp"):
        (local / "mbsync-test" / sub).mkdir(parents=True)
    (local / "mbsync-test" / "new" / "2.local3.host").write_bytes(message("mbsync three"))
    push = _run("mbsync", "-c", str(config), "-D", "-a")
    assert push.returncode == 0, push.stdout[-3000:]
    sent = set(re.findall(rb">>> \d+ (UID [A-Z]+|[A-Z]+)", push.stdout + push.stderr))
    assert {b"APPEND", b"CREATE", b"UID STORE"} <= sent
    inbox = _subjects(env, user)
    assert b"\\Seen" in inbox["mbsync one"] and "mbsync two" in inbox
    assert set(_subjects(env, user, "mbsync-test")) == {"mbsync three"}


def test_mutt_reads_in_batch_mode(env: ImapEnv, tmp_path: Path) -> None:
    user = env.new_account()
    env.deliver(user, message("mutt token1"))
    env.deliver(user, message("other"))
    url = f"imap://{user.replace('@', '%40')}@localhost:{env.port()}"
    (tmp_path / "muttrc").write_text(
        f'set folder="{url}/"\nset imap_user="{user}"\nset imap_pass="{PASSWORD}"\nset spoolfile="+INBOX"\n'
        f'set ssl_starttls=yes\nset ssl_force_tls=yes\nset certificate_file="{env.cert}"\n'
        "set confirmappend=no\nset confirmcreate=no\nset quit=yes\nset move=no\nset mbox_type=mbox\n"
        'set header_cache=""\n'
        'set message_cachedir=""\nset imap_check_subscribed=no\n'
    )
    out = tmp_path / "out.mbox"
    push = f"<tag-pattern>~s token1<enter><tag-prefix><copy-message>{out}<enter><quit>"
    command = f"mutt -d 2 -F '{tmp_path}/muttrc' -f '{url}/INBOX' -e 'push \"{push}\"'"
    result = _run("script", "-qec", command, "/dev/null", env={**os.environ, "HOME": str(tmp_path), "TERM": "vt100"})
    assert result.returncode == 0, result.stdout[-2000:]
    copied = out.read_bytes()
    assert copied.count(b"Subject: mutt token1") == 1 and b"Subject: other" not in copied
    # mutt marks messages with the keyword "Old" (PERMANENTFLAGS has \*)
    assert b"Old" in _subjects(env, user)["other"]
