"""charts/mailstack: rendered by Helm's own Go engine (helm-python-sdk's libhelm_c), the chart gives the
same objects as the kustomize overlays (defaults = production, backend sqlite = single-node, and each
optional component), every object passes the strict schema checks, and values.schema.json refuses
bad values before anything renders."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from mailstack.services.common.config import Settings, env_name

from tests.deploy_render import (
    CHART,
    CRD_SCHEMAS,
    K8S,
    KUBERNETES_VERSION,
    Manifest,
    container_env,
    containers,
    find,
    pod_spec,
    render,
    render_chart,
    render_with,
    validate_custom_resource,
)

LATEST = kubernetes_validate.utils.latest_version()
CONFIG_NAME = re.compile(r"mailstack-config-[a-z0-9]+")
# (chart values, what kustomize renders for the same installation)
EQUIVALENT: dict[str, tuple[dict[str, Any], Callable[[], list[Manifest]]]] = {
    "production": ({}, lambda: render("overlays/production")),
    "single-node": ({"backend": "sqlite"}, lambda: render("overlays/single-node")),
    "monitoring": ({"monitoring": {"enabled": True}}, lambda: render_with("production", "monitoring")),
    "cloudnative-pg": ({"cloudnativePG": {"enabled": True}}, lambda: render_with("production", "cloudnative-pg")),
}
VARIANTS = [
    {},
    {"backend": "sqlite"},
    {"monitoring": {"enabled": True}, "cloudnativePG": {"enabled": True}},
    {"proxyProtocol": {"enabled": True, "trustedNetworks": "10.0.0.0/8"}},
    {
        "services": {
            "annotations": {"metallb.universe.tf/allow-shared-ip": "mailstack"},
            "smtp": {"loadBalancerIP": "203.0.113.25"},
        }
    },
]


def normalised(manifests: list[Manifest]) -> dict[tuple[str, str], Manifest]:
    """By kind and name, without the Namespace (a Helm release does not own its namespace: `helm install
    --create-namespace`, or kubectl first; k8s/README.md) and with the config hash suffix (each side
    hashes the ConfigMap's data its own way) made equal."""
    objects: dict[tuple[str, str], Manifest] = {}
    for manifest in manifests:
        if manifest["kind"] == "Namespace":
            continue
        text = CONFIG_NAME.sub("mailstack-config", json.dumps(manifest, sort_keys=True))
        same = json.loads(text)
        objects[(same["kind"], same["metadata"]["name"])] = same
    return objects


def differences(left: Any, right: Any, path: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        found: list[str] = []
        for key in sorted(set(left) | set(right)):
            if key not in left or key not in right:
                found.append(f"{path}/{key}: only in {'chart' if key not in left else 'kustomize'}")
            else:
                found += differences(left[key], right[key], f"{path}/{key}")
        return found
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        return [d for i, (a, b) in enumerate(zip(left, right, strict=True)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if left == right else [f"{path}: kustomize {left!r} != chart {right!r}"]


@pytest.mark.parametrize("case", EQUIVALENT)
def test_the_chart_renders_what_kustomize_renders(case: str) -> None:
    values, kustomize = EQUIVALENT[case]
    expected, rendered = normalised(kustomize()), normalised(render_chart(values))
    assert set(rendered) == set(expected), (set(expected) - set(rendered), set(rendered) - set(expected))
    found = [
        f"{kind}/{name}{d}"
        for (kind, name) in expected
        for d in differences(expected[(kind, name)], rendered[(kind, name)])
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("values", VARIANTS, ids=lambda v: ",".join(v) or "defaults")
@pytest.mark.parametrize("version", [KUBERNETES_VERSION, LATEST])
def test_every_rendered_object_validates(values: dict[str, Any], version: str) -> None:
    manifests = render_chart(values)
    assert len(manifests) >= 25
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CRD_SCHEMAS:
            validate_custom_resource(manifest)
        else:
            kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"mailstore": {"replicas": "x"}}, "/mailstore/replicas"),
        ({"frontends": {"smtp": {"replicas": 0}}}, "/frontends/smtp/replicas"),
        ({"frontends": {"imap": {"replica": 2}}}, "/frontends/imap"),  # misspelt: not silently ignored
        ({"backend": "mysql"}, "/backend"),
        ({"proxyProtocol": {"enabled": True}}, "/proxyProtocol/trustedNetworks"),  # trusting nobody
        ({"dkim": {"keys": "example.com=mail:dkim/example.com.mail.pem"}}, "/dkim/keys"),  # relative path
        ({"dkim": {"keys": "example.com=mail:/data/key.pem"}}, "/dkim/keys"),  # outside the mounted Secret
        ({"tls": {"secretName": "Mail TLS"}}, "/tls/secretName"),
        (
            {"mailstore": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}, "limits": {}}}},
            "/mailstore/resources",
        ),
        ({"s3": {"endpoint": "seaweedfs:8333"}}, "/s3/endpoint"),  # no scheme
        ({"services": {"smtp": {"loadBalancerIP": "mx.example.com"}}}, "/services/smtp/loadBalancerIP"),
        ({"image": {"tag": "0.1 beta"}}, "/image/tag"),
        ({"monitoring": {"enabled": "yes"}}, "/monitoring/enabled"),
    ],
)
def test_values_schema_refuses_bad_values(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render_chart(values)
    assert where in str(refused.value)


def test_values_reach_the_objects() -> None:
    manifests = render_chart(
        {
            "image": {"repository": "registry.internal/mail/mailstack", "tag": "1.2.3"},
            "hostname": "mx1.example.org",
            "mailstore": {"replicas": 5, "maxReplicas": 12},
            "frontends": {"imap": {"replicas": 4, "maxReplicas": 8}},
            "tls": {"secretName": "mx1-tls"},
            "redis": {"secretName": "managed-redis"},
            "s3": {"endpoint": "https://s3.internal", "secretName": "s3-keys"},
            "postgresql": {"secretName": "pg", "secretKey": "dsn"},
            "proxyProtocol": {"enabled": True, "trustedNetworks": "10.0.0.0/8"},
            "dkim": {"keys": "example.org=mx1:/etc/mailstack/dkim/example.org.mx1.pem"},
            "services": {"annotations": {"shared": "a"}, "smtp": {"annotations": {"only-smtp": "b"}}},
        },
        namespace="mail",
    )
    (mailstore,) = find(manifests, "Deployment", "mailstore")
    assert mailstore["spec"]["replicas"] == 5 and mailstore["metadata"]["namespace"] == "mail"
    assert find(manifests, "HorizontalPodAutoscaler", "mailstore")[0]["spec"]["maxReplicas"] == 12
    (container,) = containers(mailstore)
    env = container_env(container, manifests)
    assert container["image"] == "registry.internal/mail/mailstack:1.2.3"
    assert env["MAILSTACK_METADATA_URL"] == ("secret", "pg", "dsn")
    assert env["MAILSTACK_EVENTS_URL"] == ("secret", "managed-redis", "url")
    assert env["AWS_ACCESS_KEY_ID"] == ("secret", "s3-keys", "access-key-id")
    assert env["MAILSTACK_S3_ENDPOINT"] == "https://s3.internal" and env["MAILSTACK_HOSTNAME"] == "mx1.example.org"
    assert env["MAILSTACK_PROXY_PROTOCOL"] == "true" and env["MAILSTACK_PROXY_TRUSTED_NETWORKS"] == "10.0.0.0/8"
    assert env["MAILSTACK_DKIM_KEYS"] == "example.org=mx1:/etc/mailstack/dkim/example.org.mx1.pem"
    (imap,) = find(manifests, "Deployment", "imap")
    assert imap["spec"]["replicas"] == 4
    assert env_of(imap, manifests)["MAILSTACK_MAILSTORE_ADDR"] == "dns:///mailstore-headless.mail.svc:50051"
    tls = [v for v in pod_spec(imap)["volumes"] if v["name"] == "tls"]
    assert tls[0]["secret"]["secretName"] == "mx1-tls"
    (smtp,) = find(manifests, "Service", "mail-smtp")
    assert smtp["metadata"]["annotations"] == {"shared": "a", "only-smtp": "b"}
    assert find(manifests, "Service", "mail-imap")[0]["metadata"]["annotations"] == {"shared": "a"}


def env_of(workload: Manifest, manifests: list[Manifest]) -> dict[str, Any]:
    (container,) = containers(workload)
    return container_env(container, manifests)


def test_a_config_change_renames_the_config_map_so_pods_roll() -> None:
    """As kustomize's configMapGenerator does: the pod templates change with the configuration."""
    names = {
        find(render_chart({"hostname": h}), "ConfigMap")[0]["metadata"]["name"] for h in ("a.example", "b.example")
    }
    assert len(names) == 2 and all(CONFIG_NAME.fullmatch(n) for n in names)


def test_sqlite_is_one_replica_whatever_the_replicas_value() -> None:
    manifests = render_chart({"backend": "sqlite", "mailstore": {"replicas": 3}})
    (statefulset,) = find(manifests, "StatefulSet", "mailstore")
    assert statefulset["spec"]["replicas"] == 1  # SQLite: one writer (ADR 0006)
    assert not find(manifests, "Deployment", "mailstore") and not find(
        manifests, "HorizontalPodAutoscaler", "mailstore"
    )
    assert not find(render_chart({"backend": "sqlite", "cloudnativePG": {"enabled": True}}), "Cluster")


def test_the_chart_copies_of_the_monitoring_files_are_the_components() -> None:
    monitoring = K8S / "components" / "monitoring"
    assert json.loads((CHART / "files" / "dashboard.json").read_text()) == json.loads(
        (monitoring / "dashboard.json").read_text()
    )
    rule = yaml.safe_load((monitoring / "prometheusrule.yaml").read_text())
    assert yaml.safe_load((CHART / "files" / "alerts.yaml").read_text()) == rule["spec"]["groups"]


def test_helm_lint_is_clean() -> None:
    report = helm_python.lint(CHART, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert not report["errors"]
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


@pytest.mark.parametrize("values", VARIANTS, ids=lambda v: ",".join(v) or "defaults")
def test_every_setting_the_chart_sets_exists(values: dict[str, Any]) -> None:
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    manifests = render_chart(values)
    checked = 0
    for workload in (m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")):
        for container in containers(workload):
            env = container_env(container, manifests)
            unknown = {k for k in env if k.startswith("MAILSTACK_")} - known
            assert not unknown, f"{workload['metadata']['name']}: not settings: {unknown}"
            checked += 1
    assert checked == 5
