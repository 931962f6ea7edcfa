"""docker-compose.yml: valid against the Compose Specification schema, and wired together:
every address a service is given is a compose service that exposes that port and is waited for."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from mailstack.services.common.config import Settings, env_name
from mailstack.services.common.metrics import MetricsServer

from tests.deploy_render import COMPOSE_OVERRIDES, COMPOSE_SCHEMA, ROOT, load_compose

MAIL_PORTS = {"smtp": {25, 465, 587}, "imap": {143, 993}, "pop3": {110, 995}}
MAILSTACK = ("mailstore", "smtp", "imap", "pop3", "outbound")
GREETED = ("mailstore", "smtp", "imap", "pop3")  # `mailstack healthcheck` asks the container's /ready
ADDRESS_SETTINGS = ("MAILSTACK_MAILSTORE_ADDR", "MAILSTACK_EVENTS_URL", "MAILSTACK_QUOTA_URL", "MAILSTACK_S3_ENDPOINT")
INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:?-[^}]*)?\}$")


VARIANTS = ((), *((name,) for name in COMPOSE_OVERRIDES))  # the default stack, and each override on top


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: "+".join(v) or "default")
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_compose(*request.param)


def named_volumes(service: dict[str, Any]) -> list[str]:
    """The short-syntax volume entries (NAME:PATH[:ro]); long-syntax ones are host binds (the DKIM folder)."""
    return [v for v in service.get("volumes", []) if isinstance(v, str)]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping, so anchors can merge it"
    return {k: str(v) for k, v in env.items()}


def host_port(value: str) -> tuple[str, int]:
    if "://" in value:
        parts = urlsplit(value)
        assert parts.hostname and parts.port, value
        return parts.hostname, parts.port
    host, _, port = value.rpartition(":")
    return host, int(port)


def exposed(service: dict[str, Any]) -> set[int]:
    ports = {int(p) for p in service.get("expose", [])}
    ports |= {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
    return ports


def waits_for(services: dict[str, Any], name: str, target: str) -> bool:
    """Whether `name` starts only once `target` is healthy, directly or through a one-shot it waits for."""
    for dependency, spec in services[name].get("depends_on", {}).items():
        if spec["condition"] not in ("service_healthy", "service_completed_successfully"):
            continue
        if dependency == target or waits_for(services, dependency, target):
            return True
    return False


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # It names draft 2019-09 by its http:// URL, which jsonschema does not map (it would warn and use
    # the latest draft), so the draft is chosen here.
    assert "draft/2019-09" in schema["$schema"]
    validator_class = jsonschema.Draft201909Validator
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_check_catches_a_mistake(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["smtp"]["depends_on"]["mailstore"]["condition"] = "service_ready"
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def test_the_stack_has_its_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    databases = {"postgres"} if "postgres" in services else set()
    assert set(MAILSTACK) | {"redis", "s3", "s3-init", "grpc-init", "otel-collector"} | databases == set(services)
    for name in MAILSTACK:
        assert services[name]["command"] == ["serve", name]
    assert services["otel-collector"]["profiles"] == ["telemetry"]
    assert all("profiles" not in s for n, s in services.items() if n != "otel-collector")
    assert "ports" not in services["outbound"]  # it only connects out


def test_every_address_names_a_service_exposing_that_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    checked = 0
    for name, service in services.items():
        env = environment(service)
        for key in (*ADDRESS_SETTINGS, "S3_ENDPOINT"):
            if key not in env or not env[key] or env[key].startswith("${"):
                continue
            host, port = host_port(env[key])
            if host == "127.0.0.1":
                continue  # the mailstore's own CLI address
            assert host in services, f"{name}: {key}={env[key]} names no compose service"
            assert port in exposed(services[host]), f"{name}: {key}: {host} does not expose {port}"
            assert waits_for(services, name, host), f"{name} does not wait for {host} to be healthy"
            checked += 1
    assert checked >= 8


def test_mailstore_listens_where_the_frontends_call(compose: dict[str, Any]) -> None:
    services = compose["services"]
    listen = environment(services["mailstore"])["MAILSTACK_MAILSTORE_LISTEN"]
    for name in (*MAIL_PORTS, "outbound"):
        assert host_port(environment(services[name])["MAILSTACK_MAILSTORE_ADDR"]) == ("mailstore", host_port(listen)[1])


def test_every_service_mounts_only_its_own_grpc_identity(compose: dict[str, Any]) -> None:
    """ADR 0009: grpc-init writes one volume per identity; each service mounts its own, read-only, where
    the settings point; the CA's key is mounted by nothing but grpc-init."""
    services = compose["services"]
    for name in MAILSTACK:
        env = environment(services[name])
        assert env["MAILSTACK_GRPC_CERT"] == "/etc/mailstack/grpc/tls.crt", name
        assert env["MAILSTACK_GRPC_KEY"] == "/etc/mailstack/grpc/tls.key", name
        assert env["MAILSTACK_GRPC_CA"] == "/etc/mailstack/grpc/ca.crt", name
        grpc_volumes = [v for v in named_volumes(services[name]) if v.startswith("grpc-")]
        expected = [f"grpc-{name}:/etc/mailstack/grpc:ro"]
        if name == "mailstore":
            expected.append("grpc-admin:/etc/mailstack/grpc-admin:ro")
        assert grpc_volumes == expected, name
    init = services["grpc-init"]
    assert init["restart"] == "no" and "grpc-ca:/grpc/ca" in init["volumes"]
    assert all(f"grpc-{n}:/grpc/{n}" in init["volumes"] for n in (*MAILSTACK, "admin"))
    assert services["mailstore"]["depends_on"]["grpc-init"]["condition"] == "service_completed_successfully"
    assert environment(services["mailstore"])["MAILSTACK_SEND_LISTEN"] == "0.0.0.0:50052"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no check"
            else:
                assert spec["condition"] == "service_completed_successfully"
                assert services[dependency]["restart"] == "no", "a one-shot service"
    assert services["mailstore"]["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"
    for name in GREETED:
        assert services[name]["healthcheck"]["test"] == ["CMD", "mailstack", "healthcheck"]
    outbound = services["outbound"]["healthcheck"]
    assert outbound["test"] == ["CMD", "mailstack", "healthcheck", "outbound"]  # asks its /ready
    assert {"interval", "timeout", "retries", "start_period"} <= set(outbound)
    for name in (*GREETED, "outbound"):  # `mailstack healthcheck` asks /ready on the metrics port
        assert environment(services[name])["MAILSTACK_METRICS_PORT"] in services[name]["expose"]


async def run_healthcheck(test: list[str], env: dict[str, str]) -> int:
    """A compose CMD health check, run as a process here (the image's `mailstack` is this one)."""
    assert test[:2] == ["CMD", "mailstack"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailstack", *test[2:], env=env, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), timeout=20)


async def test_outbound_healthcheck_asks_ready_for_real(compose: dict[str, Any]) -> None:
    test = compose["services"]["outbound"]["healthcheck"]["test"]
    ready = False

    async def readiness() -> bool:
        return ready

    server = MetricsServer("127.0.0.1", 0, readiness)
    await server.start()
    try:
        env = {"MAILSTACK_METRICS_PORT": server.address.rpartition(":")[2], "PATH": ""}
        assert await run_healthcheck(test, env) != 0  # 503: not started, draining, or no mailstore
        ready = True
        assert await run_healthcheck(test, env) == 0
    finally:
        await server.stop()


def test_mail_ports_are_published_on_their_standard_numbers(compose: dict[str, Any]) -> None:
    published: dict[str, set[int]] = {}  # outbound publishes nothing
    for name, service in compose["services"].items():
        for spec in service.get("ports", []):
            host, container = (int(p) for p in str(spec).split(":")[-2:])
            assert host == container
            published.setdefault(name, set()).add(container)
    assert published == MAIL_PORTS
    for name, ports in MAIL_PORTS.items():
        env = environment(compose["services"][name])
        assert {int(v) for k, v in env.items() if re.fullmatch(r"MAILSTACK_\w+_PORT", k)} >= ports


def test_settings_are_environment_variables_that_exist(compose: dict[str, Any]) -> None:
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    for name in MAILSTACK:
        service = compose["services"][name]
        assert "env_file" not in service and "configs" not in service
        env = environment(service)
        unknown = {k for k in env if k.startswith("MAILSTACK_")} - known
        assert not unknown, f"{name}: not settings: {unknown}"
        for volume in named_volumes(service):
            assert volume.split(":")[0] in compose["volumes"], f"{name}: {volume} is not a named volume"


def test_storage_lives_in_the_mailstore_volume() -> None:
    mailstore = load_compose()["services"]["mailstore"]
    env = environment(mailstore)
    mount = next(v.split(":")[1] for v in named_volumes(mailstore) if v.startswith("mailstore-data:"))
    assert env["MAILSTACK_METADATA_URL"] == f"sqlite://{mount}/metadata.sqlite3"
    assert env["MAILSTACK_BLOB_URL"].startswith("s3://")


def test_postgresql_variant_waits_for_its_database() -> None:
    """docker-compose.postgresql.yml: the mailstore's metadata URL names the postgres service, on a port it
    exposes, with the database and user it creates, and the mailstore starts only once it is healthy."""
    services = load_compose("docker-compose.postgresql.yml")["services"]
    url = urlsplit(environment(services["mailstore"])["MAILSTACK_METADATA_URL"])
    postgres = services["postgres"]
    database = environment(postgres)
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port in exposed(postgres)
    assert url.path == f"/{database['POSTGRES_DB']}" and url.username == database["POSTGRES_USER"]
    assert url.password == database["POSTGRES_PASSWORD"]  # the same ${...} interpolation on both sides
    assert services["mailstore"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "ports" not in postgres  # not published on the host


def test_dkim_keys_are_a_read_only_folder_of_the_mailstore_only() -> None:
    services = load_compose()["services"]
    binds = {name: [v for v in s.get("volumes", []) if isinstance(v, dict)] for name, s in services.items()}
    assert {name for name, b in binds.items() if b} == {"mailstore"}
    (dkim,) = binds["mailstore"]
    assert dkim["type"] == "bind" and dkim["read_only"] is True and dkim["target"] == "/etc/mailstack/dkim"
    assert INTERPOLATION.match(dkim["source"])  # MAILSTACK_DKIM_DIR, ./dkim-keys by default (git-ignored)
    assert environment(services["mailstore"])["MAILSTACK_DKIM_KEYS"] == "${MAILSTACK_DKIM_KEYS:-}"
    ignore = (ROOT / "dkim-keys" / ".gitignore").read_text().splitlines()
    assert "*" in ignore and "!.gitignore" in ignore  # keys put there are never committed


def test_no_secret_value_is_written_out(compose: dict[str, Any]) -> None:
    """Credentials are `${VAR:-local default}` interpolations, overridable without editing the file."""
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if re.search(r"SECRET|PASSWORD|ACCESS_KEY|TOKEN", key):
                assert INTERPOLATION.match(value), f"{name}: {key} is a literal"
            assert "@" not in value or "${" in value, f"{name}: {key} carries credentials in a URL"


def test_mailstack_containers_are_locked_down(compose: dict[str, Any]) -> None:
    for name in MAILSTACK:
        service = compose["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert service["cap_add"] == ([] if name == "outbound" else ["NET_BIND_SERVICE"])
        assert "no-new-privileges:true" in service["security_opt"]
    assert compose["services"]["imap"]["stop_grace_period"] == "60s"
    # Read-only root: whatever `serve outbound` writes under its data dir must land on the /tmp tmpfs.
    outbound = compose["services"]["outbound"]
    assert environment(outbound)["MAILSTACK_DATA_DIR"].startswith(tuple(f"{t}/" for t in outbound["tmpfs"]))
