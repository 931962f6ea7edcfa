"""Settings: defaults < TOML file < MAILSTACK_* environment; typed parsing; secrets masked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mailstack.services.common.config import (
    SettingError,
    Settings,
    check_settings,
    describe,
    load,
    load_settings,
    mask_url,
)

ROOT = Path(__file__).resolve().parents[2]


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mailstack.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.mailstore_listen == "127.0.0.1:50051"
    assert settings.smtp_port == 2525 and settings.imap_port == 1143 and settings.pop3_port == 1110
    assert settings.data_dir == "./mailstack-data"


def test_toml_overrides_defaults_and_environment_overrides_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'hostname = "mx.example.test"\nsmtp_port = 25\nimap_port = 143\n')
    env = {"MAILSTACK_CONFIG": path, "MAILSTACK_IMAP_PORT": "1143"}
    settings = load_settings(env=env)
    assert settings.hostname == "mx.example.test"  # from the file
    assert settings.smtp_port == 25  # from the file, typed by TOML
    assert settings.imap_port == 1143  # the environment wins over the file
    assert settings.pop3_port == 1110  # default


def test_config_file_argument_is_used_like_mailstack_config(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "allow_plaintext_auth = true\n")
    assert load_settings(env={}, config_file=path).allow_plaintext_auth is True


def test_unknown_setting_in_file_is_a_warning_naming_the_closest(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "smtp_prot = 25\n")
    loaded = load(env={}, config_file=path)
    assert loaded.warnings == [f"{path}: smtp_prot is not a setting; did you mean smtp_port? (ignored)"]
    assert loaded.settings == Settings() and not loaded.errors


def test_service_sections_in_the_file_name_the_same_settings(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'hostname = "mx.example.test"\nimap_port = 143\n'
        "[smtp]\nport = 25\nmax_recipients = 50\n"
        "[pop3]\nidle_timeout = 900\n"
        '[outbound]\nsmarthost = "relay.example.test:465"\n',
    )
    settings = load_settings(env={"MAILSTACK_SMTP_MAX_RECIPIENTS": "20"}, config_file=path)
    assert (settings.smtp_port, settings.imap_port, settings.pop3_idle_timeout) == (25, 143, 900)
    assert settings.outbound_smarthost == "relay.example.test:465"
    assert settings.smtp_max_recipients == 20  # the environment variable keeps its name and still wins
    assert settings.hostname == "mx.example.test"


def test_unknown_key_in_a_section_is_a_warning_in_the_section_s_words(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[smtp]\nprot = 25\n[nosuch]\nport = 1\n[imap.deeper]\nport = 1\n")
    warnings = load(env={}, config_file=path).warnings
    assert [w.split(": ", 1)[1] for w in warnings] == [
        "imap.deeper is not a setting; did you mean imap.port? (ignored)",
        "nosuch.port is not a setting; did you mean pop3s.port? (ignored)",
        "smtp.prot is not a setting; did you mean smtp.port? (ignored)",
    ]


def test_unknown_variable_is_a_warning_naming_the_closest() -> None:
    # MAILSTACK_TEST_* is the test suite's (its fixtures read them): no warning, not a setting either.
    env = {"MAILSTACK_IMAP_PROT": "143", "MAILSTACK_CONFIG": "", "MAILSTACKX": "1", "HOME": "/",
           "MAILSTACK_TEST_MAILSTORE_TRANSPORT": "grpc"}  # fmt: skip
    loaded = load(env=env)
    assert loaded.warnings == ["MAILSTACK_IMAP_PROT is not a setting; did you mean MAILSTACK_IMAP_PORT? (ignored)"]
    assert loaded.settings.imap_port == 1143


def test_a_setting_given_flat_and_in_its_section_is_an_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "smtp_port = 25\n[smtp]\nport = 2525\n")
    with pytest.raises(ValueError, match=r"smtp\.port is set twice"):
        load_settings(env={}, config_file=path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False), ("off", False)],
)
def test_boolean_words(raw: str, expected: bool) -> None:
    assert load_settings(env={"MAILSTACK_ALLOW_PLAINTEXT_AUTH": raw}).allow_plaintext_auth is expected


def test_bad_boolean_names_the_setting_its_value_and_what_is_allowed() -> None:
    with pytest.raises(SettingError) as caught:
        load_settings(env={"MAILSTACK_ALLOW_PLAINTEXT_AUTH": "maybe"})
    assert str(caught.value) == (
        "MAILSTACK_ALLOW_PLAINTEXT_AUTH=maybe: not a boolean; allowed: true or false (also yes/no, on/off, 1/0)"
    )


def test_bad_integer_names_the_setting_its_value_and_what_is_allowed() -> None:
    with pytest.raises(SettingError) as caught:
        load_settings(env={"MAILSTACK_SMTP_PORT": "twenty-five"})
    assert str(caught.value) == (
        "MAILSTACK_SMTP_PORT=twenty-five: not a whole number; allowed: a port number 0..65535 (0: any free port)"
    )


@pytest.mark.parametrize("toml", ["smtp_port = 25.5", "smtp_port = true", 'smtp_port = "25x"', "hostname = [1]"])
def test_a_file_value_of_the_wrong_type_is_never_coerced(tmp_path: Path, toml: str) -> None:
    (error,) = load(env={}, config_file=write_toml(tmp_path, toml + "\n")).errors
    assert str(error).startswith(f"MAILSTACK_{toml.split()[0].upper()}=")
    assert f"(from {tmp_path / 'mailstack.toml'}: {toml.split()[0]})" in str(error)


def test_effective_paths_follow_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(env={"MAILSTACK_DATA_DIR": str(tmp_path)})
    assert settings.effective_metadata_url == f"sqlite://{tmp_path.resolve()}/metadata.sqlite3"
    assert settings.effective_blob_url == f"file://{tmp_path.resolve()}/blobs"
    assert settings.effective_tls_cert == str(tmp_path / "tls" / "cert.pem")
    assert settings.effective_tls_key == str(tmp_path / "tls" / "key.pem")
    explicit = settings.replace(tls_cert="/etc/ssl/mail.pem", tls_key="/etc/ssl/mail.key")
    assert (explicit.effective_tls_cert, explicit.effective_tls_key) == ("/etc/ssl/mail.pem", "/etc/ssl/mail.key")


def test_describe_masks_secret_settings_and_url_passwords() -> None:
    settings = load_settings(
        env={
            "MAILSTACK_TLS_KEY": "/run/secrets/key.pem",
            "MAILSTACK_EVENTS_URL": "redis://:hunter2@redis.internal:6379/0",
            "MAILSTACK_QUOTA_URL": "redis://mailstack:s3cr3t@redis.internal:6379/1",
        }
    )
    rows = {name: value for name, value, _help in describe(settings)}
    assert rows["MAILSTACK_TLS_KEY"] == "***"
    assert rows["MAILSTACK_EVENTS_URL"] == "redis://:***@redis.internal:6379/0"
    assert rows["MAILSTACK_QUOTA_URL"] == "redis://mailstack:***@redis.internal:6379/1"
    text = repr(describe(settings))
    assert "hunter2" not in text and "s3cr3t" not in text and "/run/secrets" not in text


def test_describe_covers_every_setting_with_help() -> None:
    rows = describe(Settings())
    assert len(rows) == len(Settings.__dataclass_fields__)
    assert all(name.startswith("MAILSTACK_") and help_text for name, _value, help_text in rows)


def test_mask_url_leaves_urls_without_password_alone() -> None:
    assert mask_url("redis://redis.internal:6379/0") == "redis://redis.internal:6379/0"
    assert mask_url("s3://bucket/prefix") == "s3://bucket/prefix"


# ---------------------------------------------------------------- rules: what serve and config --check accept


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILSTACK_BIND", "0.0.0.0"),
        ("MAILSTACK_BIND", "::"),
        ("MAILSTACK_BIND", "localhost"),
        ("MAILSTACK_MAILSTORE_LISTEN", "[::]:50051"),
        ("MAILSTACK_MAILSTORE_LISTEN", "unix:/run/mailstack/grpc.sock"),
        ("MAILSTACK_SEND_LISTEN", "0.0.0.0:0"),
        ("MAILSTACK_MAILSTORE_ADDR", "mailstore:50051"),
        ("MAILSTACK_MAILSTORE_ADDR", "[::1]:50051"),
        ("MAILSTACK_MAILSTORE_ADDR", "unix:/run/mailstack/grpc.sock"),
        ("MAILSTACK_EVENTS_URL", "redis://:secret@redis.internal:6379/0"),
        ("MAILSTACK_QUOTA_URL", "rediss://redis.internal:6380/1"),
        ("MAILSTACK_METADATA_URL", "postgresql://mailstack@db.internal/mail"),
        ("MAILSTACK_BLOB_URL", "s3://bucket/prefix"),
        ("MAILSTACK_S3_ENDPOINT", "http://127.0.0.1:8333"),
        ("MAILSTACK_OUTBOUND_RETRY_SCHEDULE", "60, 120,0.5"),
        ("MAILSTACK_OUTBOUND_RESOLVER", "static:*=127.0.0.1:2525,example.test=[::1]:25"),
        ("MAILSTACK_OUTBOUND_SMARTHOST", "relay.example.test:587"),
        ("MAILSTACK_PROXY_TRUSTED_NETWORKS", "10.0.0.0/8, ::1"),
        ("MAILSTACK_HOSTNAME", "mx.example.test"),
        ("MAILSTACK_LOG_LEVEL", "debug"),
        ("MAILSTACK_SMTP_PORT", "0"),
        ("MAILSTACK_IMAPS_PORT", "65535"),
    ],
)
def test_values_a_deployment_uses_are_accepted(variable: str, value: str) -> None:
    assert check_settings(load(env={variable: value})) == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILSTACK_OUTBOUND_RETRY_SCHEDULE", ""),
        ("MAILSTACK_OUTBOUND_RETRY_SCHEDULE", "300,,900"),
        ("MAILSTACK_OUTBOUND_RETRY_SCHEDULE", "-5"),
        ("MAILSTACK_OUTBOUND_RETRY_SCHEDULE", "nan"),
        ("MAILSTACK_OUTBOUND_RETRY_SCHEDULE", "inf"),
        ("MAILSTACK_BIND", ""),
        ("MAILSTACK_BIND", "256.0.0.1"),
        ("MAILSTACK_BIND", "no-such-host.invalid"),
        ("MAILSTACK_MAILSTORE_LISTEN", "unix:"),
        ("MAILSTACK_MAILSTORE_ADDR", "mailstore:0"),
        ("MAILSTACK_METADATA_URL", "mysql://db/mail"),
        ("MAILSTACK_BLOB_URL", "file://"),
        ("MAILSTACK_HOSTNAME", "-mx.example.test"),
        ("MAILSTACK_LOGIN_DOMAIN", "exa mple.test"),
        ("MAILSTACK_DATA_DIR", " "),
        ("MAILSTACK_IMAP_MAX_LINE", "100"),
        ("MAILSTACK_ORPHAN_SWEEP_SECONDS", "-1"),  # no rule of its own: a whole number >= 0
    ],
)
def test_values_that_would_fail_later_are_refused_now(variable: str, value: str) -> None:
    (error,) = check_settings(load(env={variable: value}))
    assert str(error).startswith(f"{variable}=") and "; allowed: " in str(error)


def test_every_setting_has_a_rule_or_is_a_free_string_or_a_boolean() -> None:
    for f in dataclasses.fields(Settings):
        assert f.metadata["rule"] is not None or isinstance(f.default, str | bool), f.name


def test_the_shipped_configmap_is_valid_apart_from_files_this_machine_lacks() -> None:
    env = {}
    for line in (ROOT / "k8s" / "base" / "config.env").read_text().splitlines():
        if line.startswith("MAILSTACK_"):
            key, _, value = line.partition("=")
            env[key] = value
    for services in (["mailstore"], ["smtp"], ["outbound"]):
        errors = check_settings(load(env=env), services)
        assert {e.problem for e in errors} <= {"no such file"}, errors
        assert all(e.name.startswith(("grpc_", "tls_")) for e in errors)
    assert not [e for e in check_settings(load(env=env), ["mailstore"]) if e.name.startswith("tls_")]


def test_an_error_line_never_shows_a_password_of_a_url() -> None:
    (error,) = check_settings(load(env={"MAILSTACK_EVENTS_URL": "valkey://:hunter2@redis.internal:6379/0"}))
    assert str(error).startswith("MAILSTACK_EVENTS_URL=valkey://:***@redis.internal:6379/0: unsupported scheme")
    assert "hunter2" not in repr(vars(error)) + repr(error.args)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILSTACK_EVENTS_URL", "redis://:pw@[::1"),
        ("MAILSTACK_BIND", "a\x00b"),
        ("MAILSTACK_MAILSTORE_ADDR", "[::1:x"),
    ],
)
def test_a_value_no_parser_understands_is_an_error_line_not_a_crash(variable: str, value: str) -> None:
    (error,) = check_settings(load(env={variable: value}))
    assert str(error).startswith(f"{variable}=") and "pw" not in str(error)
