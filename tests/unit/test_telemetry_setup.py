"""The Resource's service name and when traces are exported (the process-wide provider is not touched)."""

from __future__ import annotations

import pytest
from mailstack.services.common.telemetry import _export_configured, service_resource


def test_service_name_defaults_to_mailstack_and_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service_resource("smtp").attributes["service.name"] == "mailstack-smtp"


def test_standard_variables_name_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=mx-eu,deployment.environment=prod")
    resource = service_resource("smtp")
    assert resource.attributes["service.name"] == "mx-eu"
    assert resource.attributes["deployment.environment"] == "prod"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mx-us")
    assert service_resource("smtp").attributes["service.name"] == "mx-us"


@pytest.mark.parametrize(
    ("env", "exported"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),  # the manifests' ConfigMap default
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_otlp_export_only_when_an_endpoint_is_set(env: dict[str, str], exported: bool) -> None:
    assert _export_configured(env) is exported
