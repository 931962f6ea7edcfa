"""Password guessing against the embedded default (issue 13 §5, ADR 0011): one throttle for IMAP,
POP3, SMTP AUTH and the Send API, counted when attempts start, per IP and per account; the login
lines operators and fail2ban read; the counters on /metrics."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import shutil
import smtplib
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from mailstack.services.common.metrics import MetricsServer
from mailstack.v1 import mailstore_pb2 as pb
from mailstack.v1 import mailstore_pb2_grpc as pbg
from mailstack.v1 import send_pb2 as spb
from mailstack.v1 import send_pb2_grpc as spbg

from tests.attacks.frontends import (
    ALICE,
    BOB,
    BOB_PASSWORD,
    PASSWORD,
    Line,
    frontends,
    imap_login,
    metric,
    plain,
    pop3_login,
    smtp_auth,
)
from tests.fixtures.topology import Topology, admin_channel, running_topology

REPO = Path(__file__).resolve().parents[2]
FILTER = REPO / "docs" / "fail2ban" / "filter.d" / "mailstack.conf"

IMAP_FAILED = b"a NO [AUTHENTICATIONFAILED]"
IMAP_REFUSED = b"a NO [UNAVAILABLE] too many login attempts"


async def test_parallel_logins_are_counted_when_they_start(tmp_path: Path) -> None:
    # 150 LOGINs at once against a limit of 15: only 15 passwords are checked, the rest refused.
    async with frontends(tmp_path, auth_max_attempts_per_ip=15) as stack:
        checked_before = metric("mailstack_auth_total", protocol="imap", result="failed")
        answers = await asyncio.gather(*(imap_login(stack.imap_port, BOB, f"guess{i}") for i in range(150)))
        failed = [a for a in answers if a.startswith(IMAP_FAILED)]
        refused = [a for a in answers if a.startswith(IMAP_REFUSED)]
        assert len(failed) == 15, answers[:5]
        assert len(refused) == 135
        assert metric("mailstack_auth_total", protocol="imap", result="failed") - checked_before == 15
        # and the right password from this IP is refused too, until the window passes
        assert (await imap_login(stack.imap_port, BOB, BOB_PASSWORD)).startswith(IMAP_REFUSED)


async def test_own_login_does_not_reset_guesses_at_another_account(tmp_path: Path) -> None:
    # The attacker owns alice and guesses bob's password, logging in to alice between guesses.
    async with frontends(tmp_path, auth_max_attempts_per_ip=5) as stack:
        answers = []
        for i in range(32):
            if i % 3 == 2:
                await imap_login(stack.imap_port, ALICE, PASSWORD)
            answers.append(await imap_login(stack.imap_port, BOB, f"guess{i}"))
        assert sum(a.startswith(IMAP_FAILED) for a in answers) == 5
        assert sum(a.startswith(IMAP_REFUSED) for a in answers) == 27


async def test_own_typos_are_forgotten_after_the_right_password(tmp_path: Path) -> None:
    # The one thing a success clears: that account's failures from that IP.
    async with frontends(tmp_path, auth_max_attempts_per_ip=5) as stack:
        for i in range(4):
            assert (await imap_login(stack.imap_port, ALICE, f"typo{i}")).startswith(IMAP_FAILED)
        assert (await imap_login(stack.imap_port, ALICE, PASSWORD)).startswith(b"a OK")
        for i in range(5):
            assert (await imap_login(stack.imap_port, BOB, f"guess{i}")).startswith(IMAP_FAILED)
        assert (await imap_login(stack.imap_port, BOB, "guess5")).startswith(IMAP_REFUSED)


async def test_pop3_guesses_count_for_imap_and_smtp(tmp_path: Path) -> None:
    async with frontends(tmp_path, auth_max_attempts_per_ip=4) as stack:
        for i in range(4):
            assert (await pop3_login(stack.pop3_port, BOB, f"guess{i}")).startswith(b"-ERR [AUTH]")
        # RFC 3206 §4: a temporary refusal, not a statement about the credentials
        assert (await pop3_login(stack.pop3_port, BOB, BOB_PASSWORD)).startswith(b"-ERR [SYS/TEMP]")
        assert (await imap_login(stack.imap_port, BOB, BOB_PASSWORD)).startswith(IMAP_REFUSED)
        assert (await smtp_auth(stack.submission_port, BOB, BOB_PASSWORD)).startswith(b"454 4.7.0")
        # another address is not affected
        assert (await pop3_login(stack.pop3_port, BOB, BOB_PASSWORD, source="127.0.0.2")).startswith(b"+OK")


async def test_imap_and_smtp_guesses_count_for_pop3_with_real_clients(tmp_path: Path) -> None:
    async with frontends(tmp_path, auth_max_attempts_per_ip=4) as stack:

        def guess_with_clients() -> tuple[str, str, str]:
            for i in range(2):
                with imaplib.IMAP4("127.0.0.1", stack.imap_port, timeout=10) as imap:
                    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                        imap.login(BOB, f"imap-guess{i}")
            with smtplib.SMTP("127.0.0.1", stack.submission_port, timeout=10) as smtp:
                # smtplib tries PLAIN, then LOGIN: two guesses
                with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                    smtp.login(BOB, "smtp-guess")
                assert failed.value.smtp_code == 535
            pop = poplib.POP3("127.0.0.1", stack.pop3_port, timeout=10)
            try:
                pop.user(BOB)
                with pytest.raises(poplib.error_proto) as refused:
                    pop.pass_(BOB_PASSWORD)
            finally:
                pop.close()
            with smtplib.SMTP("127.0.0.1", stack.submission_port, timeout=10) as smtp:
                with pytest.raises(smtplib.SMTPAuthenticationError) as temporary:
                    smtp.login(BOB, BOB_PASSWORD)
            with imaplib.IMAP4("127.0.0.1", stack.imap_port, timeout=10) as imap:
                with pytest.raises(imaplib.IMAP4.error) as unavailable:
                    imap.login(BOB, BOB_PASSWORD)
            return str(refused.value), f"{temporary.value.smtp_code}", str(unavailable.value)

        pop3_answer, smtp_code, imap_answer = await asyncio.to_thread(guess_with_clients)
        assert "[SYS/TEMP]" in pop3_answer
        assert smtp_code == "454"
        assert "[UNAVAILABLE]" in imap_answer


async def test_guesses_at_one_account_from_many_addresses_are_refused(tmp_path: Path) -> None:
    # A spread-out attack: each address stays under its own limit, the account's limit holds.
    async with frontends(tmp_path, auth_max_attempts_per_ip=100, auth_max_attempts_per_account=6) as stack:
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            for i in range(2):
                answer = await pop3_login(stack.pop3_port, BOB, f"guess{i}", source=source)
                assert answer.startswith(b"-ERR [AUTH]")
        refused = await imap_login(stack.imap_port, BOB, BOB_PASSWORD, source="127.0.0.4")
        assert refused == b"a NO [UNAVAILABLE] too many login attempts for this account, try again later\r\n"
        # other accounts are not affected
        assert (await imap_login(stack.imap_port, ALICE, PASSWORD, source="127.0.0.4")).startswith(b"a OK")


async def test_wrong_send_tokens_count_per_peer(tmp_path: Path) -> None:
    async with frontends(tmp_path, auth_max_attempts_per_ip=3) as stack:
        admin = cast("spbg.SendAdminAsyncStub", spbg.SendAdminStub(stack.client.channel))  # type: ignore[call-overload]
        sender = cast("spbg.SenderAsyncStub", spbg.SenderStub(stack.client.channel))  # type: ignore[call-overload]
        created = await admin.CreateToken(spb.CreateTokenRequest(name="shop", from_domains=["example.test"]))

        async def status(secret: str) -> grpc.StatusCode:
            try:
                await sender.GetSendStatus(
                    spb.GetSendStatusRequest(message_id="none"), metadata=(("authorization", f"Bearer {secret}"),)
                )
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        assert await status(created.secret) == grpc.StatusCode.NOT_FOUND  # the token works
        for i in range(3):
            assert await status(f"guess{i}") == grpc.StatusCode.UNAUTHENTICATED
        # past the limit even the right token is refused, without a lookup
        assert await status(created.secret) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert metric("mailstack_auth_total", protocol="send", result="throttled") >= 1


async def test_login_lines_have_their_fields_and_fail2ban_matches_the_failures(tmp_path: Path) -> None:
    async with frontends(tmp_path, auth_max_attempts_per_ip=4) as stack:
        # a login and logout of each protocol, then failures, then refusals
        imap = await Line.connect(stack.imap_port)
        await imap.line()
        assert (await imap.cmd(f'a LOGIN {ALICE} "{PASSWORD}"')).startswith(b"a OK")
        assert (await imap.cmd("b LOGOUT")).startswith(b"* BYE")
        await imap.close()
        pop = await Line.connect(stack.pop3_port)
        await pop.line()
        assert (await pop.cmd(f"AUTH PLAIN {plain(ALICE, PASSWORD)}")).startswith(b"+OK")
        assert (await pop.cmd("QUIT")).startswith(b"+OK")
        await pop.close()
        assert (await smtp_auth(stack.submission_port, ALICE, PASSWORD)).startswith(b"235")
        # a user name that tries to forge a second address in the line
        assert (await imap_login(stack.imap_port, '"x\\", \\"remote_ip\\": \\"6.6.6.6"', "p")).startswith(IMAP_FAILED)
        assert (await pop3_login(stack.pop3_port, "x remote_ip=6.6.6.6", "p")).startswith(b"-ERR [AUTH]")
        assert (await smtp_auth(stack.submission_port, BOB, "wrong")).startswith(b"535 5.7.8")
        assert (await pop3_login(stack.pop3_port, BOB, "wrong")).startswith(b"-ERR [AUTH]")
        assert (await smtp_auth(stack.submission_port, BOB, "wrong")).startswith(b"454 4.7.0")
        assert (await imap_login(stack.imap_port, BOB, "wrong")).startswith(IMAP_REFUSED)
        for _ in range(50):  # the logout lines are written as the servers close the sessions
            lines = stack.auth_lines()
            if sum(line["result"] == "logout" for line in lines) == 3:
                break
            await asyncio.sleep(0.1)

    fields = {"protocol", "result", "user", "remote_ip", "local_ip", "method", "tls", "session", "event"}
    for line in lines:
        assert fields <= set(line), line
        assert line["remote_ip"] == "127.0.0.1" and line["local_ip"] == "127.0.0.1" and line["tls"] is False
        assert len(line["session"]) == 12
    outcomes = [(line["protocol"], line["result"], line["method"]) for line in lines]
    for protocol, method in (("imap", "LOGIN"), ("pop3", "PLAIN"), ("smtp", "PLAIN")):
        assert (protocol, "ok", method) in outcomes
        assert (protocol, "logout", method) in outcomes
    imap_lines = [line for line in lines if line["protocol"] == "imap" and line["result"] in ("ok", "logout")]
    assert imap_lines[0]["session"] == imap_lines[1]["session"] and imap_lines[0]["user"] == ALICE
    bad = [(line["protocol"], line["result"]) for line in lines if line["result"] in ("failed", "throttled")]
    assert bad == [
        ("imap", "failed"),
        ("pop3", "failed"),
        ("smtp", "failed"),
        ("pop3", "failed"),
        ("smtp", "throttled"),
        ("imap", "throttled"),
    ]
    assert all(" " not in line["user"] and '"' not in line["user"] for line in lines)

    # fail2ban reads the real lines: every failure and refusal matches, with the client's address
    fail2ban_regex = shutil.which("fail2ban-regex")
    assert fail2ban_regex, "fail2ban-regex is not installed: run scripts/install_clients.sh (Debian package fail2ban)"
    command = [fail2ban_regex, "-o", "ip", str(stack.log_path), str(FILTER)]
    run = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["127.0.0.1"] * len(bad), run.stdout


async def test_login_counters_on_metrics(tmp_path: Path) -> None:
    async with frontends(tmp_path, auth_max_attempts_per_ip=2) as stack:
        server = MetricsServer("127.0.0.1", 0, lambda: asyncio.sleep(0, True))
        await server.start()
        try:

            def scrape() -> dict[str, float]:
                with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10) as response:
                    text = response.read().decode()
                samples = {}
                for row in text.splitlines():
                    if row.startswith("mailstack_auth_total{"):
                        name, value = row.rsplit(" ", 1)
                        samples[name] = float(value)
                return samples

            before = await asyncio.to_thread(scrape)
            assert (await pop3_login(stack.pop3_port, ALICE, PASSWORD)).startswith(b"+OK")
            for _ in range(2):
                assert (await pop3_login(stack.pop3_port, BOB, "wrong")).startswith(b"-ERR [AUTH]")
            assert (await pop3_login(stack.pop3_port, BOB, "wrong")).startswith(b"-ERR [SYS/TEMP]")
            after = await asyncio.to_thread(scrape)
        finally:
            await server.stop()

    def grew(result: str) -> float:
        key = f'mailstack_auth_total{{protocol="pop3",result="{result}"}}'
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert (grew("ok"), grew("failed"), grew("throttled")) == (1, 2, 1)


# ---------------------------------------------------------------- the multi-process topology


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    """The deployed processes, with a small per-IP budget in the mailstore and fast failures."""

    def tune(topo: Topology) -> None:
        topo.mailstore.env["MAILSTACK_AUTH_MAX_ATTEMPTS_PER_IP"] = "4"
        for frontend, name in ((topo.imaps[0], "IMAP"), (topo.pop3, "POP3"), (topo.smtp, "SMTP")):
            frontend.env[f"MAILSTACK_{name}_AUTH_FAILURE_DELAY_MS"] = "0"

    with running_topology(tmp_path, tune=tune) as topo:
        yield topo


@pytest.mark.slow
def test_guesses_count_across_protocols_and_processes(topology: Topology) -> None:
    with admin_channel(topology) as channel:
        pbg.AdminStub(channel).CreateAccount(pb.CreateAccountRequest(name=BOB, password=BOB_PASSWORD), timeout=10)
    with topology.diagnose():
        for i in range(4):  # POP3, its own process
            pop = poplib.POP3("127.0.0.1", topology.pop3.ports["pop3"], timeout=10)
            try:
                pop.user(BOB)
                with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
                    pop.pass_(f"guess{i}")
            finally:
                pop.close()
        # the imap and smtp processes refuse the right password from this address now
        with imaplib.IMAP4("127.0.0.1", topology.imaps[0].ports["imap"], timeout=10) as imap:
            with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
                imap.login(BOB, BOB_PASSWORD)
        with smtplib.SMTP("127.0.0.1", topology.smtp.ports["submission"], timeout=10) as smtp:
            smtp.ehlo()
            smtp.user, smtp.password = BOB, BOB_PASSWORD
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.auth("PLAIN", smtp.auth_plain)
            assert refused.value.smtp_code == 454
        pop = poplib.POP3("127.0.0.1", topology.pop3.ports["pop3"], timeout=10)
        try:
            pop.user(BOB)
            with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
                pop.pass_(BOB_PASSWORD)
        finally:
            pop.close()

    # Each process's own log (JSON, as config.env sets it), read by fail2ban as it is.
    fail2ban_regex = shutil.which("fail2ban-regex")
    assert fail2ban_regex, "fail2ban-regex is not installed: run scripts/install_clients.sh (Debian package fail2ban)"
    matched = {}
    for service in (topology.pop3, topology.imaps[0], topology.smtp):
        command = [fail2ban_regex, "-o", "ip", str(service.log_path), str(FILTER)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        matched[service.name] = run.stdout.split()
    assert matched == {"pop3": ["127.0.0.1"] * 5, "imap": ["127.0.0.1"], "smtp": ["127.0.0.1"]}
