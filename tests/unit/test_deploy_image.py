"""The container image: Dockerfile structure, the build context, and its health check script run for
real against a running mailstore and POP3 server."""

from __future__ import annotations

import asyncio
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_render import ROOT
from tests.fixtures.mailstore import running_mailstore, settings_for
from tests.fixtures.pop3 import port_of, running_pop3

DOCKERFILE = (ROOT / "Dockerfile").read_text()
MAIL_PORTS = {25, 465, 587, 143, 993, 110, 995}


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


def healthcheck_source() -> str:
    match = re.search(r"COPY --chmod=0755 <<'PY' /usr/local/bin/mailstack-healthcheck\n(.*?)\nPY\n", DOCKERFILE, re.S)
    assert match, "the health check script is a heredoc in the Dockerfile"
    return match.group(1)


def load_healthcheck() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "mailstack_healthcheck"}
    exec(compile(healthcheck_source(), "mailstack-healthcheck", "exec"), namespace)
    return namespace


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
    assert healthcheck.endswith('CMD ["mailstack-healthcheck"]')
    exposed = {int(p) for p in " ".join(instructions(runtime, "EXPOSE")).split()}
    assert exposed == MAIL_PORTS | {50051, 50052}  # the internal API and the Send API
    assert instructions(runtime, "ENTRYPOINT") == ['["mailstack"]']


def test_image_defaults_use_the_standard_ports() -> None:
    env = dict(
        item.split("=", 1) for run in instructions(stages()[-1], "ENV") for item in shlex.split(run) if "=" in item
    )
    ports = {k: int(v) for k, v in env.items() if re.fullmatch(r"MAILSTACK_\w+_PORT", k)}
    assert set(ports.values()) == MAIL_PORTS
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


def test_healthcheck_script_finds_no_service_outside_a_container(monkeypatch: pytest.MonkeyPatch) -> None:
    check = load_healthcheck()
    monkeypatch.setattr(check["Path"], "glob", lambda self, pattern: iter(()))
    with pytest.raises(SystemExit, match="no `mailstack serve` process"):
        check["main"]()


async def test_healthcheck_passes_against_a_running_mailstore_and_pop3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = load_healthcheck()
    settings = settings_for(tmp_path)
    async with running_mailstore(settings) as (mailstore, _client):
        async with running_pop3(settings.replace(mailstore_addr=mailstore.address)) as pop3:
            monkeypatch.setenv("MAILSTACK_SEND_LISTEN", mailstore.send_address)  # health in the clear there
            monkeypatch.setenv("MAILSTACK_POP3_PORT", str(port_of(pop3, "POP3 (STLS)")))
            await asyncio.to_thread(check["check_mailstore"])
            await asyncio.to_thread(check["check_greeting"], "pop3")


async def test_healthcheck_fails_when_nothing_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.mailstore import free_port

    check = load_healthcheck()
    monkeypatch.setenv("MAILSTACK_SMTP_PORT", str(free_port()))
    with pytest.raises(OSError):
        await asyncio.to_thread(check["check_greeting"], "smtp")
