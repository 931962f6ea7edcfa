"""The SMTP transaction log line joins the mailstore's: same trace id, and the client's IP, as JSON fields.

SMTP and the mailstore run in this process (one in-memory span exporter sees both) and talk gRPC
over 127.0.0.1; logs are written by the JSON formatter MAILSTACK_LOG_FORMAT=json selects."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import smtplib
from pathlib import Path
from typing import Any

from mailstack.services.common.logs import setup_logging
from mailstack.services.common.telemetry import recorded_spans

from tests.e2e.smtp_support import ALICE, smtp_stack

MESSAGE = b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: joined\r\n\r\nfollow me\r\n"


async def test_smtp_transaction_line_carries_client_ip_and_the_mailstores_trace_id(tmp_path: Path) -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("INFO", "json", out)  # what `mailstack serve` does with MAILSTACK_LOG_FORMAT=json
    try:
        with recorded_spans() as exporter:
            async with smtp_stack(tmp_path) as stack:

                def send() -> str:
                    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=30) as s:
                        s.ehlo("client.test")
                        s.mail("bob@remote.test")
                        s.rcpt(ALICE)
                        code, text = s.data(MESSAGE)
                        assert code == 250, text
                        return text.decode().rsplit(" ", 1)[1]

                queue_id = await asyncio.to_thread(send)
            spans = list(exporter.get_finished_spans())
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])

    entries: list[dict[str, Any]] = [json.loads(line) for line in out.getvalue().splitlines() if line]
    smtp = [e for e in entries if e["logger"] == "mailstack.smtp" and e["message"] == "smtp transaction"]
    stored = [e for e in entries if e["logger"] == "mailstack.mailstore" and e["message"].startswith("delivered")]
    assert len(smtp) == 1 and len(stored) == 1, entries
    line = smtp[0]
    assert line["remote_ip"] == "127.0.0.1"
    assert line["queue_id"] == queue_id and line["helo"] == "client.test"
    assert line["result"] == "accepted" and line["reply"].startswith("250 2.0.0")
    assert line["sender"] == "<bob@remote.test>" and line["recipients"] == ALICE
    assert line["size"] == len(MESSAGE)
    # One trace: the smtp line and the mailstore's delivery line carry the transaction's trace id.
    (transaction,) = [s for s in spans if s.name == "smtp.transaction"]
    assert transaction.context is not None
    trace_id = f"{transaction.context.trace_id:032x}"
    assert line["trace_id"] == trace_id
    assert stored[0]["trace_id"] == trace_id
