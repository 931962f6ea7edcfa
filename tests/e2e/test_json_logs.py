"""JSON logs as a collector reads them from a real `mailstack serve` process: one object per line,
the facts in fields of their own (numbers as numbers), never as key=value text inside the message."""

from __future__ import annotations

import imaplib
import json
import re
import smtplib
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.serve_support import ALICE, add_account, base_env, serving, wait_for
from tests.fixtures.ports import free_port
from tests.fixtures.topology import port_open

pytestmark = pytest.mark.slow

MESSAGE = b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: logged\r\n\r\nhello\r\n"
KEY_VALUE = re.compile(r"\b[a-z_]+=\S")  # "queue_id=ABC": a field hidden in the text


def records(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is JSON, or this raises
    assert all(isinstance(r, dict) for r in parsed)
    return parsed


def one(found: list[dict[str, Any]], message: str, **fields: Any) -> dict[str, Any]:
    matching = [r for r in found if r["message"] == message and all(r.get(k) == v for k, v in fields.items())]
    assert len(matching) == 1, f"{message} {fields}: {[r['message'] for r in found]}"
    return matching[0]


def test_json_log_lines_carry_structured_fields(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("smtp", "submission", "submissions", "imap", "imaps")}
    env = base_env(tmp_path, log_format="json", **{f"{k}_port": str(v) for k, v in ports.items()})
    stderr = tmp_path / "stderr.jsonl"
    with serving(tmp_path, ["mailstore", "smtp", "imap"], env, {"smtp": ports["smtp"]}, stderr):
        wait_for(lambda: port_open(ports["imap"]), 20, "imap")
        add_account(env)
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as client:
            assert client.sendmail("bob@remote.test", [ALICE], MESSAGE) == {}
        imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30)
        imap.starttls()
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(ALICE, "not-the-password")
        imap.logout()
    found = records(stderr)

    for record in found:
        assert {"timestamp", "level", "logger", "message"} <= record.keys()
        assert not KEY_VALUE.search(record["message"]), record["message"]
    delivered = one(found, "delivered", logger="mailstack.mailstore")
    assert delivered["sender"] == "<bob@remote.test>" and delivered["recipients"] == 1
    assert delivered["stored"] is True and isinstance(delivered["size"], int) and delivered["size"] > len(MESSAGE)
    transaction = one(found, "smtp transaction")
    assert transaction["remote_ip"] == "127.0.0.1" and transaction["result"] == "accepted"
    assert transaction["recipients"] == ALICE and isinstance(transaction["ms"], int)
    assert transaction["queue_id"] and delivered["message_id"]
    failed = one(found, "imap login failed", result="failed")
    assert (failed["user"], failed["tls"], failed["remote_ip"]) == (ALICE, True, "127.0.0.1")
    listening = {(r["service"], r["listener"]) for r in found if r["message"] == "listening"}
    assert {("smtp", "smtp"), ("imap", "IMAP (STARTTLS)")} <= listening, listening
    assert one(found, "mailstore listening")["address"] == env["MAILSTACK_MAILSTORE_LISTEN"]
