"""The container image: Dockerfile structure, the build context, and its health check (`mailstack
healthcheck`) run for real against a running mailstore (tests/e2e/test_healthcheck_proxy.py runs it
against `mailstack serve` with PROXY on)."""

from __future__ import annotations

import asyncio
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from mailstack import cli
from mailstack.cli import healthcheck
from tests.deploy_render import ROOT
from tests.fixtures.mailstore import running_mailstore, settings_for
from tests.fixtures.pop3 import port_of, running_pop3

DOCKERFILE = (ROOT / "Dockerfile").read_text()
MAIL_PORTS = {25, 465, 587, 143, 993, 110, 995, 24}  # 24: LMTP (RFC 2033)


def stages() -> list[list[tuple[str, str]]]:
    """Instructions per build stage as (INSTRUCTION, arguments), continuation lines joined, heredocs skipped."""
    result: list[list[tuple[str, str]]] = []
    lines = iter(DOCKERFILE.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        instruction, _, args = line.strip().partition(" ")
        heredoc = re.search(r"<<'?(\w+)'?", args)
        if heredoc:
            for body in lines:
                if body == heredoc.group(1):
                    break
        if instruction.upper() == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction.upper(), args))
    return result


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instruction, args in stage if instruction == name]


def test_builder_stage_builds_wheels_and_runtime_installs_only_them() -> None:
    builder, runtime = stages()
    assert builder[0][1].endswith("AS builder")
    assert any("pip wheel" in run for run in instructions(builder, "RUN"))
    install = " ".join(instructions(runtime, "RUN"))
    assert "pip install" in install and "--no-index" in install and "/wheels" in install
    assert not any("COPY" == i and "services/" in a for i, a in runtime), "no sources in the runtime image"


def test_base_image_is_python_311_slim() -> None:
    args = dict(a.split("=", 1) for a in re.findall(r"^ARG (\S+=\S+)", DOCKERFILE, re.M))
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert [s[0][1].split()[0] for s in stages()] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    runtime = stages()[-1]
    (user,) = instructions(runtime, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000  # numeric, so Kubernetes runAsNonRoot can verify it


def test_labels_healthcheck_ports_and_command() -> None:
    runtime = stages()[-1]
    labels = " ".join(instructions(runtime, "LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    (healthcheck,) = instructions(runtime, "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["mailstack", "healthcheck"]')  # the CLI command, not a script of its own
    assert "<<" not in DOCKERFILE, "no script embedded in the Dockerfile"
    exposed = {int(p) for p in " ".join(instructions(runtime, "EXPOSE")).split()}
    assert exposed == MAIL_PORTS | {50051, 50052, 9090}  # the internal API, the Send API, /metrics and /ready
    assert instructions(runtime, "ENTRYPOINT") == ['["mailstack"]']


def test_image_defaults_use_the_standard_ports() -> None:
    env = dict(
        item.split("=", 1) for run in instructions(stages()[-1], "ENV") for item in shlex.split(run) if "=" in item
    )
    ports = {k: int(v) for k, v in env.items() if re.fullmatch(r"MAILSTACK_\w+_PORT", k)}
    assert set(ports.values()) == MAIL_PORTS | {9090}
    assert env["MAILSTACK_METRICS_PORT"] == "9090"  # the HEALTHCHECK asks its /ready
    assert env["MAILSTACK_BIND"] == "0.0.0.0" and env["MAILSTACK_LOG_FORMAT"] == "json"


def test_build_context_holds_every_package_folder() -> None:
    """.dockerignore allows only what the builder copies, and that covers every installed package."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {d.split("/")[0] + "/" for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {a.split()[0] for a in instructions(stages()[0], "COPY")} | {
        name for a in instructions(stages()[0], "COPY") for name in a.split()[:-1]
    }
    assert folders <= allowed and folders <= copied
    assert {"pyproject.toml", "setup.py", "README.md"} <= allowed & copied


def test_healthcheck_finds_no_service_outside_a_container(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(healthcheck, "PROC", tmp_path)  # no process at all
    assert cli.main(["healthcheck"]) == 1
    assert "no `mailstack serve` process" in capsys.readouterr().err


def test_healthcheck_finds_what_serve_runs(tmp_path: Path) -> None:
    for pid, argv in (("7", ["/usr/local/bin/python", "/usr/local/bin/mailstack", "serve", "smtp", "imap"]),
                      ("9", ["sleep", "60"])):  # fmt: skip
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    assert healthcheck.served(tmp_path) == ["smtp", "imap"]
    (tmp_path / "7" / "cmdline").write_bytes(b"python\0-m\0mailstack\0serve\0")
    assert healthcheck.served(tmp_path) == ["mailstore", "smtp", "imap", "pop3"]  # all in one


async def test_healthcheck_without_a_metrics_port_checks_mailstore_health_and_frontend_ports(tmp_path: Path) -> None:
    settings = settings_for(tmp_path).replace(metrics_port=0)
    async with running_mailstore(settings) as (mailstore, _client):
        async with running_pop3(settings.replace(mailstore_addr=mailstore.address)) as pop3:
            probed = settings.replace(
                send_listen=mailstore.send_address,  # health in the clear on the Send API port
                pop3_port=port_of(pop3, "POP3 (STLS)"),
                pop3s_port=port_of(pop3, "POP3S"),
            )
            await asyncio.to_thread(healthcheck.check, probed, ["mailstore", "pop3"])  # no mail protocol spoken
            with pytest.raises(RuntimeError, match=r"MAILSTACK_POP3_PORT is 0 .* set MAILSTACK_METRICS_PORT"):
                await asyncio.to_thread(healthcheck.check, probed.replace(pop3_port=0), ["pop3"])
            with pytest.raises(RuntimeError, match="outbound has no port"):
                await asyncio.to_thread(healthcheck.check, probed, ["outbound"])
        with pytest.raises(OSError):  # the POP3 server stopped: its ports take no connection
            await asyncio.to_thread(healthcheck.check, probed, ["pop3"])


async def test_healthcheck_fails_when_nothing_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fixtures.ports import free_port

    monkeypatch.setenv("MAILSTACK_METRICS_PORT", str(free_port()))
    assert await asyncio.to_thread(cli.main, ["healthcheck", "smtp"]) == 1
    assert "mailstack healthcheck: smtp:" in capsys.readouterr().err
    assert cli.main(["healthcheck", "nosuch"]) == 1
