"""The IMAP transcript suite: every script in tests/imap_scripts/ against the embedded default and
against S3 + Redis (the script format is described in tests/fixtures/imap_script.py)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.services.imap.commands.misc import EXTENSIONS
from mailstack.services.imap.registry import COMMANDS

from tests.fixtures.imap_script import Runner, parse
from tests.fixtures.imap_server import PASSWORD, ImapEnv, imap_env

SCRIPTS = Path(__file__).resolve().parent.parent / "imap_scripts"
SCRIPT_FILES = sorted(SCRIPTS.rglob("*.imap"))


@pytest.fixture(scope="module", params=["embedded", "s3redis"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    tmp = tmp_path_factory.mktemp(f"scripts-{request.param}")
    overrides: dict[str, object] = {}
    if request.param == "s3redis":
        server = request.getfixturevalue("s3_server")
        from tests.fixtures.s3_server import make_bucket

        bucket = make_bucket(server.endpoint)
        redis_url = request.getfixturevalue("redis_server").url
        overrides = dict(
            blob_url=f"s3://{bucket}/mail", s3_endpoint=server.endpoint, events_url=redis_url, quota_url=redis_url
        )
    with imap_env(tmp, imap_poll_interval=1, **overrides) as e:
        yield e


def test_the_suite_has_scripts() -> None:
    assert len(SCRIPT_FILES) >= 1, f"no *.imap scripts under {SCRIPTS}"


@pytest.mark.parametrize("path", SCRIPT_FILES, ids=[str(p.relative_to(SCRIPTS)) for p in SCRIPT_FILES])
def test_script(env: ImapEnv, path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_script(env, path)
    no_tracebacks(caplog)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """Bad input gets a protocol answer, never a server error: nothing the servers logged while the
    script ran may carry an exception or be an ERROR."""
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, "the servers logged errors: " + "; ".join(f"{r.name}: {r.getMessage()}" for r in bad[:5])


def run_script(env: ImapEnv, path: Path) -> None:
    """One script against the env's IMAP server, with fresh accounts."""
    runner = Runner(
        port=env.port(),
        tls_port=env.port(tls=True),
        accounts=env.new_account,
        append=lambda user, mailbox, data, flags: env.append(user, mailbox, data, flags) and None,
        password=PASSWORD,
    )
    runner.run(parse(path))


# Where each advertised capability's scripts are (a folder of scripts, or one script): a capability
# added to CAPABILITY without a script here fails test_every_capability_has_a_script.
CAPABILITY_SCRIPTS = {
    "IMAP4rev1": "rfc3501",
    "IMAP4rev2": "rfc9051",
    "STARTTLS": "rfc3501/starttls.imap",
    "AUTH=PLAIN": "rfc3501/authenticate.imap",
    "LITERAL+": "rfc7888",
    "SASL-IR": "rfc4959",
    "ID": "rfc2971",
    "ENABLE": "rfc5161",
    "IDLE": "rfc2177",
    "NAMESPACE": "rfc2342",
    "UIDPLUS": "rfc4315",
    "MOVE": "rfc6851",
    "UNSELECT": "rfc3691",
    "CHILDREN": "rfc3348",
    "LIST-EXTENDED": "rfc5258",
    "LIST-STATUS": "rfc5819",
    "SPECIAL-USE": "rfc6154",
    "CREATE-SPECIAL-USE": "rfc6154",
    "CONDSTORE": "rfc7162/condstore.imap",
    "QRESYNC": "rfc7162/qresync.imap",
    "ESEARCH": "rfc4731",
    "SEARCHRES": "rfc5182",
    "BINARY": "rfc3516",
    "UTF8=ACCEPT": "rfc6855",
    "QUOTA": "rfc9208",
    "QUOTA=RES-STORAGE": "rfc9208/quota.imap",
    "QUOTA=RES-MESSAGE": "rfc9208/quota.imap",
    "MULTIAPPEND": "interop/multiappend.imap",
    "STATUS=SIZE": "rfc8438",
    "OBJECTID": "rfc8474",
    "SAVEDATE": "rfc8514",
    "WITHIN": "rfc5032",
    "PREVIEW": "rfc8970",
    "COMPRESS=DEFLATE": "rfc4978",
    "CATENATE": "rfc4469",
    "NOTIFY": "rfc5465",
    "SORT": "rfc5256/sort.imap",
    "SORT=DISPLAY": "rfc5957",
    "THREAD=ORDEREDSUBJECT": "rfc5256/thread.imap",
    "THREAD=REFERENCES": "rfc5256/thread.imap",
    "ESORT": "rfc5267/esort.imap",
    "CONTEXT=SEARCH": "rfc5267/context-search.imap",
    "CONTEXT=SORT": "rfc5267/context-sort.imap",
    "APPENDLIMIT": "rfc7889",
}


def test_every_capability_has_a_script() -> None:
    # Every capability the server can advertise (LOGINDISABLED is a state, tested in test_imap_auth.py)
    advertised = {"IMAP4rev1", "IMAP4rev2", "STARTTLS", "AUTH=PLAIN", "APPENDLIMIT", *EXTENSIONS}
    assert advertised <= CAPABILITY_SCRIPTS.keys(), f"no scripts named for {advertised - CAPABILITY_SCRIPTS.keys()}"
    for capability, where in CAPABILITY_SCRIPTS.items():
        path = SCRIPTS / where
        found = [path] if path.is_file() else sorted(path.glob("*.imap"))
        assert found, f"{capability}: no script at tests/imap_scripts/{where}"
        if capability not in ("IMAP4rev1", "IMAP4rev2", "AUTH=PLAIN", "STARTTLS"):
            # the script must exercise or name the capability it stands for
            words = {capability.split("=")[0].upper(), capability.upper()}
            text = " ".join(p.read_text(encoding="utf-8").upper() for p in found)
            assert any(w in text for w in words), f"{capability}: not mentioned in tests/imap_scripts/{where}"


def test_every_command_has_a_script() -> None:
    # every command of the registry is sent by at least one script (as `tag CMD` or `tag UID CMD`)
    sent: set[str] = set()
    for path in SCRIPT_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"C\d*: \S+ (?:UID )?([A-Za-z]+)", line)
            if m:
                sent.add(m.group(1).upper())
    missing = set(COMMANDS) - sent
    assert not missing, f"no script sends {sorted(missing)}"
