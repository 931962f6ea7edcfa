"""Subaddressing (RFC 5233) end to end: RCPT, DATA, folders, submission, and the settings."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from mailstack.services.common.tls import client_ssl_context
from mailstack.v1 import mailstore_pb2 as pb

from tests.e2e.smtp_support import ALICE, BOB, BOB_PASSWORD, DOMAIN, RawSmtp, SmtpStack, smtp_stack
from tests.fixtures.mailstore import fetch_body

MESSAGE = b"From: x@remote.test\r\nSubject: tagged\r\n\r\nbody\r\n"


async def send(port: int, rcpts: list[str]) -> list[str]:
    """The RCPT replies and, when any was accepted, the DATA reply last."""
    smtp = await RawSmtp.connect(port)
    await smtp.greet()
    assert (await smtp.cmd("MAIL FROM:<x@remote.test>")).startswith("250")
    answers = [await smtp.cmd(f"RCPT TO:<{rcpt}>") for rcpt in rcpts]
    if any(a.startswith("250") for a in answers):
        assert (await smtp.cmd("DATA")).startswith("354")
        answers.append(await smtp.cmd(MESSAGE + b"."))
    await smtp.close()
    return answers


async def subjects(stack: SmtpStack, account: str, mailbox: str) -> list[bytes]:
    request = pb.FetchMetadataRequest(account=account, mailbox=mailbox)
    metas = [m async for batch in stack.client.store.FetchMetadata(request) for m in batch.messages]
    return [await fetch_body(stack.client, account, mailbox, m.uid) for m in metas]


async def test_a_tagged_address_reaches_the_user(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        answers = await send(stack.ports["smtp"], [f"alice+news@{DOMAIN}", f"Alice+Other@{DOMAIN.upper()}"])
        assert [a[:3] for a in answers] == ["250", "250", "250"], answers
        # Both tags are the same account: one copy, in INBOX (folders are off by default).
        assert len(await stack.inbox(ALICE)) == 1
        # The trace keeps the address as written (the user sees which tag was used).
        assert (await send(stack.ports["smtp"], [f"alice+news@{DOMAIN}"]))[-1].startswith("250")
        assert f"for <alice+news@{DOMAIN}>".encode() in (await stack.inbox(ALICE))[1]


async def test_unknown_users_stay_unknown_with_a_tag(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        answers = await send(stack.ports["smtp"], [f"nobody+x@{DOMAIN}", f"+alice@{DOMAIN}", "alice+x@elsewhere.test"])
        assert answers[0].startswith("550 5.1.1") and answers[1].startswith("550 5.1.1"), answers
        assert answers[2].startswith("554 5.7.1"), answers  # not our domain: still no relay
        assert await stack.count(ALICE) == 0


async def test_an_empty_delimiter_turns_subaddressing_off(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, subaddress_delimiter="") as stack:
        answers = await send(stack.ports["smtp"], [f"alice+news@{DOMAIN}"])
        assert answers[0].startswith("550 5.1.1"), answers


async def test_another_delimiter(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, subaddress_delimiter="-") as stack:
        answers = await send(stack.ports["smtp"], [f"alice-news@{DOMAIN}", f"alice+news@{DOMAIN}"])
        assert answers[0].startswith("250") and answers[1].startswith("550 5.1.1"), answers
        assert await stack.count(ALICE) == 1


async def test_an_account_or_alias_named_with_the_delimiter_wins(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        team = pb.CreateAccountRequest(name=f"team+ops@{DOMAIN}", password="x-secret-12")
        await stack.client.admin.CreateAccount(team)
        await stack.client.admin.AddAlias(pb.AddAliasRequest(address=f"carol+x@{DOMAIN}", account=BOB))
        answers = await send(stack.ports["smtp"], [f"team+ops@{DOMAIN}", f"carol+x@{DOMAIN}", f"carol+y@{DOMAIN}"])
        assert [a[:3] for a in answers] == ["250", "250", "550", "250"], answers
        assert len(await subjects(stack, f"team+ops@{DOMAIN}", "INBOX")) == 1
        assert await stack.count(BOB) == 1


async def test_a_catch_all_does_not_swallow_a_users_tagged_mail(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        await stack.client.admin.AddAlias(pb.AddAliasRequest(address=f"@{DOMAIN}", account=BOB))
        answers = await send(stack.ports["smtp"], [f"alice+x@{DOMAIN}", f"nobody+x@{DOMAIN}"])
        assert [a[:3] for a in answers] == ["250", "250", "250"], answers
        assert await stack.count(ALICE) == 1 and await stack.count(BOB) == 1


async def test_tag_folders_when_the_folder_exists(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path, subaddress_folders=True) as stack:
        await stack.client.store.CreateMailbox(pb.CreateMailboxRequest(account=ALICE, name="Lists"))
        await stack.client.store.CreateMailbox(pb.CreateMailboxRequest(account=BOB, name="lists"))
        port = stack.ports["smtp"]
        # Folder names are case-sensitive (RFC 3501 §5.1): the tag as the sender wrote it picks the folder.
        assert (await send(port, [f"alice+Lists@{DOMAIN}", f"bob+Lists@{DOMAIN}"]))[-1].startswith("250")
        assert len(await subjects(stack, ALICE, "Lists")) == 1
        assert await stack.count(BOB) == 1  # bob has "lists", not "Lists": INBOX
        # No such folder, or a name that is no folder name: INBOX.
        assert (await send(port, [f"alice+nope@{DOMAIN}", f"bob+a%2f..@{DOMAIN}"]))[-1].startswith("250")
        assert await stack.count(ALICE) == 1
        assert len(await subjects(stack, ALICE, "Lists")) == 1


async def test_tag_folders_are_off_by_default(tmp_path: Path) -> None:
    async with smtp_stack(tmp_path) as stack:
        await stack.client.store.CreateMailbox(pb.CreateMailboxRequest(account=ALICE, name="Lists"))
        assert (await send(stack.ports["smtp"], [f"alice+Lists@{DOMAIN}"]))[-1].startswith("250")
        assert await stack.count(ALICE) == 1
        assert await subjects(stack, ALICE, "Lists") == []


async def test_submission_treats_a_tagged_local_address_as_local(tmp_path: Path) -> None:
    """Submission's local/remote split agrees with RCPT: alice+x is stored, never queued outbound."""
    async with smtp_stack(tmp_path, subaddress_folders=True) as stack:
        await stack.client.store.CreateMailbox(pb.CreateMailboxRequest(account=ALICE, name="shop"))
        message = f"From: {BOB}\r\nTo: alice+shop@{DOMAIN}\r\nSubject: s\r\n\r\nhi\r\n".encode()

        def submit() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("localhost", stack.ports["submission"], timeout=30) as s:
                s.starttls(context=client_ssl_context(stack.cafile))
                s.login(BOB, BOB_PASSWORD)
                return s.sendmail(BOB, [f"alice+shop@{DOMAIN}"], message)

        assert await asyncio.to_thread(submit) == {}
        assert len(await subjects(stack, ALICE, "shop")) == 1
