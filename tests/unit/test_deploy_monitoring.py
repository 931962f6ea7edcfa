"""k8s/components/monitoring: the Prometheus operator objects validate against their CRDs' schemas, every
PromQL expression (alerts and dashboard) parses, and every metric and label it selects is one that the
code defines, so an alert cannot silently watch a name nobody exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest

from tests.deploy_render import (
    CRD_SCHEMAS,
    K8S,
    KUBERNETES_VERSION,
    ROOT,
    Manifest,
    containers,
    find,
    pod_labels,
    render_with,
    selector_matches,
    validate_custom_resource,
    workloads,
)

DASHBOARD = K8S / "components" / "monitoring" / "dashboard.json"
SOURCES = ("services", "storage", "mailstack", "message")
# Labels Prometheus and the PodMonitor add to every scraped series (the relabeling adds `component`).
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "component"}
# Metrics a manifest may use before the code declares them (kind, labels): none today, so the code alone
# decides what the alerts and the dashboard may query.
PENDING: dict[str, tuple[str, frozenset[str]]] = {}
# What the alerts must watch (issue 17): mailstore down, delivery failures, queue growing, certificate
# expiring, quota repair pending.
ALERTED = {
    "up",
    "mailstack_outbound_bounces_total",
    "mailstack_deliveries_total",
    "mailstack_outbound_queue_depth",
    "mailstack_tls_certificate_expiry_timestamp_seconds",
    "mailstack_quota_repair_pending",
}
DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(mailstack_\w+)\"\s*,\s*\"[^\"]*\"(?:\s*\"[^\"]*\")*"
    r"(?:\s*,\s*(?:labelnames=)?[\[(]([^\])]*)[\])])?"
)
SUFFIXES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count"),
}


def defined_metrics() -> dict[str, frozenset[str]]:
    """Exposed series name -> its label names, from every prometheus_client metric the code declares."""
    declared: dict[str, tuple[str, frozenset[str]]] = dict(PENDING)
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for kind, name, labels in DEFINITION.findall(path.read_text()):
                names = frozenset(re.findall(r"\"(\w+)\"", labels or ""))
                declared[name] = (kind, names)
    exposed: dict[str, frozenset[str]] = {"up": frozenset()}
    for name, (kind, labels) in declared.items():
        base = name.removesuffix("_total") if kind == "Counter" else name
        for suffix in SUFFIXES[kind]:
            exposed[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return exposed


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    return render_with("production", "monitoring")


@pytest.fixture(scope="module")
def metrics() -> dict[str, frozenset[str]]:
    return defined_metrics()


def alert_rules(manifests: list[Manifest]) -> Iterator[dict[str, Any]]:
    for rule_object in find(manifests, "PrometheusRule"):
        for group in rule_object["spec"]["groups"]:
            yield from group["rules"]


def selected(expr: str, metrics: dict[str, frozenset[str]]) -> set[str]:
    """Metric names an expression selects; fails on a name or label the code does not define."""
    tree = promql_parser.parse(expr)  # ValueError on a syntax error
    names: set[str] = set()
    grouping: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name in metrics, f"{expr}: {node.name} is not defined by the code"
            names.add(node.name)
            for matcher in node.matchers.matchers:
                allowed = metrics[node.name] | SCRAPE_LABELS
                assert matcher.name in allowed, f"{expr}: {node.name} has no label {matcher.name}"
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)

    promql_parser.walk(tree, visit)
    known = SCRAPE_LABELS.union(*(metrics[n] for n in names)) if names else SCRAPE_LABELS
    assert grouping <= known, f"{expr}: groups by {grouping - known}, which none of its metrics has"
    return names


def test_the_custom_resources_validate_against_their_crds(manifests: list[Manifest]) -> None:
    custom = [m for m in manifests if (m["apiVersion"], m["kind"]) in CRD_SCHEMAS]
    assert {m["kind"] for m in custom} == {"PodMonitor", "PrometheusRule"}
    for manifest in custom:
        validate_custom_resource(manifest)
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) not in CRD_SCHEMAS:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("kind", "mistake"),
    [
        ("PodMonitor", lambda m: m["spec"]["podMetricsEndpoints"][0].update(prot="metrics")),
        ("PodMonitor", lambda m: m["spec"]["podMetricsEndpoints"][0].update(interval="30 seconds")),
        ("PrometheusRule", lambda m: m["spec"]["groups"][0]["rules"][0].update(fore="5m")),
        ("PrometheusRule", lambda m: m["spec"]["groups"][0]["rules"][0].update(record="x")),  # alert and record
        ("PrometheusRule", lambda m: m["spec"]["groups"][0]["rules"][0].pop("expr")),
    ],
)
def test_the_crd_schemas_catch_mistakes(manifests: list[Manifest], kind: str, mistake: Any) -> None:
    (manifest,) = json.loads(json.dumps(find(manifests, kind)))
    mistake(manifest)
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(manifest)


def test_the_pod_monitor_scrapes_every_mailstack_pod(manifests: list[Manifest]) -> None:
    (monitor,) = find(manifests, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    mailstack = [w for w in workloads(manifests) if pod_labels(w).get("app.kubernetes.io/name") == "mailstack"]
    assert {pod_labels(w)["app.kubernetes.io/component"] for w in mailstack} >= {"mailstore", "smtp", "outbound"}
    for workload in mailstack:
        assert selector_matches(monitor["spec"]["selector"], pod_labels(workload)), workload["metadata"]["name"]
        ports = {p.get("name") for c in containers(workload) for p in c.get("ports", [])}
        assert endpoint["port"] in ports, workload["metadata"]["name"]
    (relabel,) = endpoint["relabelings"]
    assert relabel["targetLabel"] == "component"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]


def test_every_alert_parses_and_watches_defined_metrics(
    manifests: list[Manifest], metrics: dict[str, frozenset[str]]
) -> None:
    rules = list(alert_rules(manifests))
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)) >= 8
    watched: set[str] = set()
    for rule in rules:
        watched |= selected(rule["expr"], metrics)
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    assert watched >= ALERTED, f"not alerted on: {ALERTED - watched}"


def test_every_dashboard_query_parses_and_selects_defined_metrics(
    manifests: list[Manifest], metrics: dict[str, frozenset[str]]
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "mailstack" and dashboard["panels"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    shown: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"].strip("${}") in variables
        for target in panel["targets"]:
            shown |= selected(target["expr"], metrics)
    assert {"mailstack_sessions", "mailstack_outbound_queue_depth", "mailstack_deliveries_total"} <= shown
    (config_map,) = find(manifests, "ConfigMap", "mailstack-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["mailstack.json"]) == dashboard


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(mailstack_outbound_bounces_total[5m])",  # unclosed bracket
        'up{component="mailstore"',  # unclosed matcher
        "rate(mailstack_outbound_bounces_total[5x])",  # bad duration
        "mailstack_outbound_bounce_total > 0",  # not a metric the code defines
        'mailstack_outbound_queue_depth{result="x"} > 0',  # a label it does not have
        "sum by (mailbox) (mailstack_sessions)",  # grouping by a label it does not have
        "sum(rate(mailstack_command_duration_seconds[5m]))",  # a histogram's bare name is not a series
    ],
)
def test_the_query_checks_catch_mistakes(expr: str, metrics: dict[str, frozenset[str]]) -> None:
    with pytest.raises((ValueError, AssertionError)):
        selected(expr, metrics)


def test_the_code_declares_metrics_the_way_the_checker_reads_them(metrics: dict[str, frozenset[str]]) -> None:
    # The regex reader must see the real declarations, with their labels, not an empty table.
    assert metrics["mailstack_outbound_attempts_total"] == {"result"}
    assert metrics["mailstack_storage_duration_seconds_bucket"] == {"store", "operation", "le"}
    assert metrics["mailstack_sending_refused_total"] == {"api", "reason"}  # a description over two lines
    assert "mailstack_event_loop_lag_seconds" in metrics and len(metrics) > 30
