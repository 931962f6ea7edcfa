"""Every command and program of README.md, run as written against a real `mailstack serve` (issue
17): the blocks in order, from the repository's root (where `.venv` is), with the environment an
operator's shell would have (MAILSTACK_DATA_DIR and MAILSTACK_MAILSTORE_ADDR of the running
server; MAILSTACK_SEND_ADDR and MAILSTACK_TOKEN for the Send API example, which reads them).
A block marked not runnable in the README (tests/readme_blocks.py) is left out, with its reason
checked by tests/unit/test_readme_docs.py."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.serve_process import running_serve
from tests.readme_blocks import ROOT, Block, blocks

pytestmark = pytest.mark.slow
TIMEOUT = 180
PASSWORD = "alice-s3cret\n"  # the tour's `user add` asks twice


def run_sh(block: Block, env: dict[str, str]) -> str:
    """The block in a terminal, as an operator types it (`user add` prompts on /dev/tty and
    refuses to without one): bash on a pseudo-terminal that `setsid -c` makes its controlling
    one; each password prompt is answered once it shows (getpass discards typed-ahead input)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        ["setsid", "-c", "bash", "-euo", "pipefail", "-c", block.code],
        cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    output = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                break
            output += data
            if re.search(rb"Password( \(again\))?: $", output):
                os.write(master, PASSWORD.encode())
        rc = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.decode(errors="replace").replace("\r\n", "\n")
    assert rc == 0, f"{block} failed:\n{block.code}\n{text}"
    return text


def run_python(block: Block, env: dict[str, str], folder: Path) -> str:
    script = folder / f"readme_{block.line}.py"
    script.write_text(block.code)
    result = subprocess.run([sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)  # fmt: skip
    assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_toml(block: Block, env: dict[str, str], folder: Path) -> str:
    config = folder / f"readme_{block.line}.toml"
    config.write_text(block.code)
    result = subprocess.run([sys.executable, "-m", "mailstack", "config", "--config", str(config)], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert result.returncode == 0, f"{block} is not a valid settings file:\n{result.stderr}"
    return result.stdout


def stubs() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ROOT / "proto").rglob("*_pb2*"))}


def test_every_readme_snippet_runs(tmp_path: Path) -> None:
    runnable = [b for b in blocks() if b.language in ("sh", "python", "toml") and not b.not_runnable]
    before = stubs()
    outputs: dict[str, str] = {}
    with running_serve(tmp_path) as served:
        env = {**served.env, "MAILSTACK_SEND_ADDR": f"127.0.0.1:{served.ports['send']}"}
        for block in runnable:
            if block.language == "sh":
                out = run_sh(block, env)
                if "token create" in block.code:  # the secret is printed once; the example reads it
                    tokens = re.findall(r"^(mst_\S+)$", out, re.M)
                    assert len(tokens) == 1, out
                    env["MAILSTACK_TOKEN"] = tokens[0]
            elif block.language == "python":
                out = run_python(block, env, tmp_path)
            else:
                out = run_toml(block, env, tmp_path)
            outputs[block.code] = out

    tour = next(out for code, out in outputs.items() if "user add alice" in code)
    assert "alice@example.test" in tour and "bob@example.test" in tour and "example.test" in tour
    sent = next(out for code, out in outputs.items() if "SenderStub" in code)
    assert sent.split() == ["bob@example.test", "DELIVERY_DELIVERED"]
    keygen = next(out for code, out in outputs.items() if "dkim keygen" in code)
    assert f"MAILSTACK_DKIM_KEYS=shop.example=mailstack:{tmp_path}/data/dkim/shop.example.mailstack.pem" in keygen
    settings = next(out for code, out in outputs.items() if code.startswith('hostname = "mx.example.test"'))
    assert "mx.example.test" in settings
    assert stubs() == before  # `scripts/gen_proto.py` regenerated exactly what is committed
    assert len(runnable) >= 5
