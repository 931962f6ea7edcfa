"""k8s/: the rendered overlays validate against the Kubernetes JSON schemas (strict: unknown fields
fail) and are wired together: addresses, probes, ports, NetworkPolicy flows, security contexts."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
from mailstack.services.common.config import Settings, env_name
from mailstack.services.common.lifecycle import FRONTEND_GRACE

from tests.deploy_render import (
    K8S,
    KUBERNETES_VERSION,
    OVERLAYS,
    Endpoint,
    Manifest,
    connection_allowed,
    container_env,
    containers,
    endpoint_for,
    find,
    iter_probes,
    pod_labels,
    pod_spec,
    render,
    render_with,
    selector_matches,
    service_selects,
    validate_custom_resource,
    workloads,
)

# The base alone has no mailstore workload (a component brings it), so only the overlays are deployable.
TARGETS = tuple(f"overlays/{name}" for name in OVERLAYS)
SQLITE_OVERLAYS = ("development", "single-node")  # the mailstore as one StatefulSet replica
POSTGRESQL_OVERLAYS = ("production",)  # the mailstore as a Deployment of several replicas
FRONTENDS = ("smtp", "imap", "pop3")
WORKERS = ("outbound",)  # no listener: not behind the load balancer, no privileged port
MAIL_PORTS = {"smtp": {25, 465, 587}, "imap": {143, 993}, "pop3": {110, 995}}
ADDRESS_SETTINGS = ("MAILSTACK_MAILSTORE_ADDR", "MAILSTACK_EVENTS_URL", "MAILSTACK_QUOTA_URL", "MAILSTACK_S3_ENDPOINT")
IDENTITIES = ("mailstore", "smtp", "imap", "pop3", "outbound")  # each workload's own gRPC identity (ADR 0009)
SECRETS = {"mailstack-tls", "mailstack-s3", "mailstack-redis", "mailstack-grpc-admin", "mailstack-dkim"}
SECRETS |= {"mailstack-postgres", "mailstack-db-app"}  # an external PostgreSQL's URL; CloudNativePG's
SECRETS |= {f"mailstack-grpc-{name}" for name in IDENTITIES}
EXTERNAL = Endpoint(external=True)
PROMETHEUS = Endpoint(
    labels={"app.kubernetes.io/name": "prometheus"},
    namespace="monitoring",
    namespace_labels={"kubernetes.io/metadata.name": "monitoring"},
)
APPLICATION = Endpoint(
    labels={"app": "shop"},
    namespace="shop",
    namespace_labels={"kubernetes.io/metadata.name": "shop", "mailstack.io/send-api": "allowed"},
)
OTHER_NAMESPACE = Endpoint(
    labels={"app": "blog"}, namespace="blog", namespace_labels={"kubernetes.io/metadata.name": "blog"}
)
LATEST = kubernetes_validate.utils.latest_version()


@pytest.fixture(scope="module", params=TARGETS)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(request.param)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render(f"overlays/{request.param}")


def component(manifests: list[Manifest], name: str) -> Manifest:
    (found,) = [w for w in workloads(manifests) if pod_labels(w).get("app.kubernetes.io/component") == name]
    return found


def mailstack_containers(manifests: list[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    return [
        (w, c)
        for w in workloads(manifests)
        if pod_labels(w).get("app.kubernetes.io/name") == "mailstack"
        for c in containers(w)
    ]


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, LATEST])
def test_every_manifest_validates_against_the_kubernetes_schemas(manifests: list[Manifest], version: str) -> None:
    assert len(manifests) >= 15
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_validation_catches_a_mistake() -> None:
    (deployment, *_) = find(render("base"), "Deployment")
    pod_spec(deployment)["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 25}}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, LATEST, strict=True)


def test_workloads_and_their_companions(overlay: tuple[str, list[Manifest]]) -> None:
    name, manifests = overlay
    deployments = {
        d["metadata"]["name"]: d for d in find(manifests, "Deployment") if d["metadata"]["name"] in FRONTENDS
    }
    assert set(deployments) == set(FRONTENDS)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in find(manifests, "HorizontalPodAutoscaler")}
    pdbs = find(manifests, "PodDisruptionBudget")
    replicated_mailstore = name in POSTGRESQL_OVERLAYS  # it has its own HPA and PDB then
    assert set(hpas) == set(FRONTENDS) | ({"mailstore"} if replicated_mailstore else set())
    assert len(pdbs) == len(FRONTENDS) + len(WORKERS) + replicated_mailstore
    for frontend, deployment in deployments.items():
        replicas = deployment["spec"]["replicas"]
        assert replicas >= (2 if name == "production" else 1)
        assert hpas[frontend]["spec"]["minReplicas"] == replicas <= hpas[frontend]["spec"]["maxReplicas"]
        assert hpas[frontend]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        (pdb,) = [p for p in pdbs if selector_matches(p["spec"]["selector"], pod_labels(deployment))]
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace >= FRONTEND_GRACE + 30  # the app's own drain, then the preStop delay and slack
    assert pod_spec(deployments["imap"])["terminationGracePeriodSeconds"] >= 90  # IDLE clients get * BYE
    (outbound,) = find(manifests, "Deployment", "outbound")
    assert outbound["spec"]["replicas"] >= (2 if name == "production" else 1)  # leases make replicas safe
    (pdb,) = [p for p in pdbs if selector_matches(p["spec"]["selector"], pod_labels(outbound))]
    assert pdb["spec"]["selector"] == outbound["spec"]["selector"]
    # The worker's own drain, then slack for an SMTP reply in flight.
    assert pod_spec(outbound)["terminationGracePeriodSeconds"] >= FRONTEND_GRACE + 30
    (container,) = containers(outbound)
    assert container["args"] == ["serve", "outbound"]
    assert [p["name"] for p in container["ports"]] == ["metrics"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    services = find(manifests, "Service")
    assert not [s for s in services if service_selects(s, pod_labels(outbound))]


@pytest.mark.parametrize("name", SQLITE_OVERLAYS)
def test_sqlite_mailstore_is_one_stateful_replica_with_its_volume(name: str) -> None:
    manifests = render(f"overlays/{name}")
    assert not find(manifests, "Deployment", "mailstore")
    (mailstore,) = find(manifests, "StatefulSet", "mailstore")
    assert mailstore["spec"]["replicas"] == 1  # SQLite: one writer (ADR 0006)
    (claim,) = mailstore["spec"]["volumeClaimTemplates"]
    (container,) = containers(mailstore)
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    env = container_env(container, manifests)
    assert env["MAILSTACK_METADATA_URL"] == f"sqlite://{mount}/metadata.sqlite3"
    assert env["MAILSTACK_DATA_DIR"] == mount
    assert find(manifests, "Service", mailstore["spec"]["serviceName"])[0]["spec"]["clusterIP"] == "None"
    for kind, probe in iter_probes(container):
        # The internal port needs a client certificate: the HTTP health endpoints answer the probes.
        assert probe["httpGet"]["port"] == "metrics", kind
        assert probe["httpGet"]["path"] == ("/live" if kind == "livenessProbe" else "/ready"), kind


def test_every_address_names_a_service_and_port_that_exist(overlay: tuple[str, list[Manifest]]) -> None:
    name, manifests = overlay
    services = {s["metadata"]["name"]: s for s in find(manifests, "Service")}
    resolved = 0
    for workload, container in ((w, c) for w in workloads(manifests) for c in containers(w)):
        env = container_env(container, manifests)
        for key in ADDRESS_SETTINGS:
            value = env.get(key)
            if value is None:
                continue
            if isinstance(value, tuple):
                assert value[0] == "secret" and value[1] in SECRETS, (key, value)
                assert name != "development", f"{key} is plain configuration in development"
                continue
            if not value:
                assert key == "MAILSTACK_S3_ENDPOINT" and name != "development", key  # AWS S3
                continue
            if value.startswith("dns:///"):  # gRPC's DNS resolver: NAME[.NAMESPACE.svc]:PORT (ADR 0032)
                value = value.removeprefix("dns:///")
            parts = urlsplit(value if "://" in value else f"grpc://{value}")
            if parts.hostname == "127.0.0.1":
                assert pod_labels(workload)["app.kubernetes.io/component"] == "mailstore", "only it calls itself"
                continue
            service_name, _, domain = str(parts.hostname).partition(".")
            if domain:  # a namespace-qualified name must name this namespace
                assert domain == f"{workload['metadata']['namespace']}.svc", f"{key}={value}: another namespace"
            service = services.get(service_name)
            assert service, f"{workload['metadata']['name']}: {key}={value}: no such Service"
            assert parts.port in {p["port"] for p in service["spec"]["ports"]}, f"{key}={value}: port not served"
            backends = [w for w in workloads(manifests) if service_selects(service, pod_labels(w))]
            assert backends, f"Service {service['metadata']['name']} selects no pod"
            resolved += 1
    assert resolved >= (9 if name == "development" else 4)


def test_services_reach_container_ports(manifests: list[Manifest]) -> None:
    for service in find(manifests, "Service"):
        backends = [w for w in workloads(manifests) if service_selects(service, pod_labels(w))]
        assert backends, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            serving = [
                w
                for w in backends
                if any(target in (p.get("name"), p["containerPort"]) for c in containers(w) for p in c.get("ports", []))
            ]
            assert serving, f"{service['metadata']['name']}:{port['port']} reaches no container port {target}"


def test_probes_point_at_ports_that_exist(manifests: list[Manifest]) -> None:
    probed = 0
    for workload in workloads(manifests):
        for container in containers(workload):
            ports = {p["containerPort"] for p in container.get("ports", [])}
            ports |= {p["name"] for p in container.get("ports", []) if "name" in p}
            for kind, probe in iter_probes(container):
                action = next(probe[k] for k in ("grpc", "tcpSocket", "httpGet", "exec") if k in probe)
                assert "port" not in action or action["port"] in ports, (workload["metadata"]["name"], kind)
                probed += 1
            if workload["kind"] != "Job":
                assert {"readinessProbe", "livenessProbe"} <= set(container), workload["metadata"]["name"]
    assert probed >= 10


def test_liveness_is_answered_by_the_event_loop(manifests: list[Manifest]) -> None:
    # Issue 13 §4: a TCP check on the mail port passed while IMAP's event loop was stuck in one
    # command (the kernel accepts). /live is served on that loop; the mailstore's gRPC health
    # servicer is an asyncio one, on its loop too.
    checked = 0
    for workload, container in mailstack_containers(manifests):
        if workload["kind"] == "Job":
            continue
        probe = container["livenessProbe"]
        assert "tcpSocket" not in probe and "exec" not in probe, workload["metadata"]["name"]
        if pod_labels(workload).get("app.kubernetes.io/component") in (*FRONTENDS, *WORKERS):
            assert probe["httpGet"] == {"path": "/live", "port": "metrics"}, workload["metadata"]["name"]
            checked += 1
    assert checked == len(FRONTENDS) + len(WORKERS)


def test_one_load_balancer_per_protocol_exposes_exactly_the_mail_ports(manifests: list[Manifest]) -> None:
    """Issue 17: kube-proxy's health check for externalTrafficPolicy Local counts the local endpoints of a
    whole Service; a node is healthy for a Service's every port if one selected pod runs there. So each
    LoadBalancer must select only pods that serve all of its ports, else a node with only imap pods
    attracts port-25 traffic and drops it."""
    balancers = [s for s in find(manifests, "Service") if s["spec"].get("type") == "LoadBalancer"]
    assert {b["metadata"]["name"] for b in balancers} == {"mail-smtp", "mail-submission", "mail-imap", "mail-pop3"}
    exposed: list[int] = []
    for balancer in balancers:
        name = balancer["metadata"]["name"]
        assert balancer["spec"]["externalTrafficPolicy"] == "Local", name
        selected = [w for w in workloads(manifests) if service_selects(balancer, pod_labels(w))]
        assert len(selected) == 1, f"{name} selects {[w['metadata']['name'] for w in selected]}"
        (frontend,) = selected
        owner = pod_labels(frontend)["app.kubernetes.io/component"]
        served = {p.get("name"): p["containerPort"] for c in containers(frontend) for p in c["ports"]}
        for port in balancer["spec"]["ports"]:
            # Every port of this Service is served by every pod it selects, at the same number.
            assert served.get(port["targetPort"]) == port["port"] and port["port"] in MAIL_PORTS[owner], (name, port)
            exposed.append(port["port"])
    assert sorted(exposed) == sorted(set().union(*MAIL_PORTS.values())), "each mail port exactly once"
    smtp = {p["port"] for b in balancers if b["metadata"]["name"] == "mail-smtp" for p in b["spec"]["ports"]}
    assert smtp == {25}, "the MX address carries port 25 only (its own IP, PTR and reputation)"
    others = [s for s in find(manifests, "Service") if s not in balancers]
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in others)


def test_a_node_with_only_imap_pods_is_healthy_for_no_smtp_port() -> None:
    """The failure of issue 17, replayed: endpoints per Service on a node that runs one imap pod."""
    manifests = render("overlays/production")
    imap_pod = pod_labels(component(manifests, "imap"))
    for balancer in (s for s in find(manifests, "Service") if s["spec"].get("type") == "LoadBalancer"):
        ports = {p["port"] for p in balancer["spec"]["ports"]}
        local_endpoints = 1 if service_selects(balancer, imap_pod) else 0
        assert (local_endpoints > 0) is bool(ports & MAIL_PORTS["imap"]), balancer["metadata"]["name"]


@pytest.mark.parametrize("name", POSTGRESQL_OVERLAYS)
def test_postgresql_mailstore_is_a_replicated_deployment(name: str) -> None:
    """Issue 20: several mailstore replicas on one PostgreSQL, each taken out of rotation while its
    database is unreachable (readiness /ready), a PDB that keeps a majority through drains, an HPA."""
    manifests = render(f"overlays/{name}")
    assert not find(manifests, "StatefulSet") and not find(manifests, "PersistentVolumeClaim")
    (mailstore,) = find(manifests, "Deployment", "mailstore")
    replicas = mailstore["spec"]["replicas"]
    assert replicas >= 3
    assert mailstore["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # a rollout never dips below
    (container,) = containers(mailstore)
    env = container_env(container, manifests)
    assert env["MAILSTACK_METADATA_URL"] == ("secret", "mailstack-postgres", "url")
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    volumes = {v["name"]: v for v in pod_spec(mailstore)["volumes"]}
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == env["MAILSTACK_DATA_DIR"])
    assert "emptyDir" in volumes[data["name"]], "a replica keeps nothing of its own"
    (pdb,) = [p for p in find(manifests, "PodDisruptionBudget") if p["metadata"]["name"] == "mailstore"]
    assert pdb["spec"]["selector"] == mailstore["spec"]["selector"] and pdb["spec"]["maxUnavailable"] == 1
    (hpa,) = find(manifests, "HorizontalPodAutoscaler", "mailstore")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mailstore"}
    assert hpa["spec"]["minReplicas"] == replicas < hpa["spec"]["maxReplicas"]
    spread = pod_spec(mailstore)["topologySpreadConstraints"][0]
    assert selector_matches(spread["labelSelector"], pod_labels(mailstore))
    # Readiness matters only if the frontends' resolver drops not-ready pods: the headless Service must
    # not publish them, and every frontend must resolve it (dns:///) rather than the ClusterIP Service.
    (headless,) = find(manifests, "Service", "mailstore-headless")
    assert headless["spec"]["clusterIP"] == "None" and not headless["spec"].get("publishNotReadyAddresses")
    namespace = mailstore["metadata"]["namespace"]
    for frontend in (*FRONTENDS, *WORKERS):
        (caller,) = containers(component(manifests, frontend))
        address = container_env(caller, manifests)["MAILSTACK_MAILSTORE_ADDR"]
        assert address == f"dns:///mailstore-headless.{namespace}.svc:50051", frontend


def test_the_mailstore_reaches_postgresql_and_nothing_else_does() -> None:
    manifests = render("overlays/production")
    external_db = Endpoint(external=True)
    mailstore = endpoint_for(component(manifests, "mailstore"))
    assert connection_allowed(manifests, mailstore, external_db, 5432)
    for other in (*FRONTENDS, *WORKERS):
        assert not connection_allowed(manifests, endpoint_for(component(manifests, other)), external_db, 5432), other
    sqlite = render("overlays/single-node")
    assert not connection_allowed(sqlite, endpoint_for(component(sqlite, "mailstore")), external_db, 5432)


def test_cloudnative_pg_component() -> None:
    """Optional in-cluster PostgreSQL: the CNPG Cluster validates against its CRD, the mailstore reads the
    operator's app Secret, and the default-deny namespace lets exactly the database's flows through."""
    manifests = render_with("production", "cloudnative-pg")
    (cluster,) = find(manifests, "Cluster", "mailstack-db")
    validate_custom_resource(cluster)
    assert cluster["spec"]["instances"] >= 3 and cluster["spec"]["bootstrap"]["initdb"]["database"] == "mailstack"
    (container,) = containers(component(manifests, "mailstore"))
    assert container_env(container, manifests)["MAILSTACK_METADATA_URL"] == ("secret", "mailstack-db-app", "uri")
    namespace = cluster["metadata"]["namespace"]
    instance = Endpoint(
        labels={"cnpg.io/cluster": "mailstack-db"},
        namespace=namespace,
        namespace_labels={"kubernetes.io/metadata.name": namespace},
    )
    operator = Endpoint(
        labels={"app.kubernetes.io/name": "cloudnative-pg"},
        namespace="cnpg-system",
        namespace_labels={"kubernetes.io/metadata.name": "cnpg-system"},
    )
    mailstore = endpoint_for(component(manifests, "mailstore"))
    assert connection_allowed(manifests, mailstore, instance, 5432)
    assert connection_allowed(manifests, instance, instance, 5432)  # streaming replication
    assert connection_allowed(manifests, operator, instance, 8000)  # the instance manager's status port
    assert connection_allowed(manifests, instance, EXTERNAL, 443)  # the Kubernetes API
    for other in ("smtp", "imap", "pop3", "outbound"):
        assert not connection_allowed(manifests, endpoint_for(component(manifests, other)), instance, 5432), other
    assert not connection_allowed(manifests, EXTERNAL, instance, 5432)
    assert not connection_allowed(manifests, OTHER_NAMESPACE, instance, 5432)
    broken = {**cluster, "spec": {**cluster["spec"], "instance": 3}}  # misspelt
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(broken)


def test_dkim_keys_come_from_a_read_only_secret(overlay: tuple[str, list[Manifest]]) -> None:
    """Issue 17: the mailstore (which signs what it sends) mounts the DKIM Secret read-only where
    MAILSTACK_DKIM_KEYS points; no other pod holds the keys."""
    _, manifests = overlay
    for workload in (w for w in workloads(manifests) if pod_labels(w).get("app.kubernetes.io/name") == "mailstack"):
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        dkim = [v for v in volumes.values() if v.get("secret", {}).get("secretName") == "mailstack-dkim"]
        is_mailstore = pod_labels(workload)["app.kubernetes.io/component"] == "mailstore"
        assert bool(dkim) is is_mailstore, workload["metadata"]["name"]
        if not is_mailstore:
            continue
        (volume,) = dkim
        assert volume["secret"]["defaultMode"] == 0o440 and volume["secret"]["optional"] is True
        (container,) = containers(workload)
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount == {"name": volume["name"], "mountPath": "/etc/mailstack/dkim", "readOnly": True}
        env = container_env(container, manifests)
        for item in filter(None, env["MAILSTACK_DKIM_KEYS"].split(",")):
            path = item.split("=", 1)[1].split(":", 1)[1]
            assert path.startswith(mount["mountPath"] + "/"), f"{item}: not an absolute path in the Secret"


def test_proxy_protocol_is_off_unless_the_load_balancer_sends_it(overlay: tuple[str, list[Manifest]]) -> None:
    _, manifests = overlay
    (config,) = find(manifests, "ConfigMap")
    assert config["data"]["MAILSTACK_PROXY_PROTOCOL"] == "false"


@pytest.mark.parametrize(
    ("source", "destination", "port", "allowed"),
    [
        ("smtp", "mailstore", 50051, True),
        ("imap", "mailstore", 50051, True),
        ("pop3", "mailstore", 50051, True),
        ("redis", "mailstore", 50051, False),
        (EXTERNAL, "mailstore", 50051, False),
        ("imap", "redis", 6379, True),
        ("mailstore", "redis", 6379, True),
        ("pop3", "redis", 6379, False),
        ("smtp", "redis", 6379, False),
        ("mailstore", "s3", 8333, True),
        ("mailstore", EXTERNAL, 443, True),
        ("smtp", "s3", 8333, False),
        ("imap", "s3", 8333, False),
        ("pop3", EXTERNAL, 443, False),
        ("smtp", EXTERNAL, 443, False),
        (EXTERNAL, "smtp", 25, True),
        (EXTERNAL, "smtp", 587, True),
        (EXTERNAL, "imap", 993, True),
        (EXTERNAL, "pop3", 995, True),
        (EXTERNAL, "smtp", 50051, False),
        (EXTERNAL, "redis", 6379, False),
        (EXTERNAL, "s3", 8333, False),
        ("smtp", "imap", 143, False),  # egress is default-deny: pods reach only what they need
        ("mailstore", "smtp", 25, False),
        ("smtp", EXTERNAL, 25, False),  # only the outbound worker relays
        ("imap", EXTERNAL, 587, False),
        ("outbound", "mailstore", 50051, True),
        ("outbound", "mailstore", 50052, False),
        ("smtp", "mailstore", 50052, False),
        (EXTERNAL, "mailstore", 50052, False),
        (APPLICATION, "mailstore", 50052, True),  # a namespace that opted in reaches the Send API only
        (APPLICATION, "mailstore", 50051, False),
        (OTHER_NAMESPACE, "mailstore", 50052, False),
        ("outbound", EXTERNAL, 25, True),
        ("outbound", EXTERNAL, 465, True),  # a smarthost
        ("outbound", EXTERNAL, 587, True),
        ("outbound", EXTERNAL, 443, False),
        ("outbound", "redis", 6379, False),
        ("outbound", "s3", 8333, False),
        ("outbound", "smtp", 25, False),  # the cluster's own MX only through the load balancer
        (EXTERNAL, "outbound", 9090, False),
        (EXTERNAL, "outbound", 25, False),
        (PROMETHEUS, "outbound", 9090, True),  # the one thing that connects to the worker
        (PROMETHEUS, "outbound", 25, False),
        ("smtp", "outbound", 9090, False),
    ],
)
def test_network_policies_admit_exactly_the_designed_flows(
    source: str | Endpoint, destination: str | Endpoint, port: int, allowed: bool
) -> None:
    # The development overlay holds every party (in-cluster Redis and S3); production shares base's policies.
    manifests = render("overlays/development")

    def endpoint(side: str | Endpoint) -> Endpoint:
        return side if isinstance(side, Endpoint) else endpoint_for(component(manifests, side))

    assert connection_allowed(manifests, endpoint(source), endpoint(destination), port) is allowed


def test_default_deny_and_dns(manifests: list[Manifest]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in find(manifests, "NetworkPolicy")}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert {p["port"] for p in policies["allow-dns"]["egress"][0]["ports"]} == {53}


def test_security_context_of_every_container(manifests: list[Manifest]) -> None:
    for workload in workloads(manifests):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        frontend = pod_labels(workload).get("app.kubernetes.io/component") in FRONTENDS
        # Only what binds ports below 1024 gets the sysctl (and NET_BIND_SERVICE, below).
        assert ("sysctls" in pod["securityContext"]) is frontend, workload["metadata"]["name"]
        for container in containers(workload):
            context = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["capabilities"].get("add", []) == (["NET_BIND_SERVICE"] if frontend else []), where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], where


def test_every_workload_mounts_its_own_grpc_identity(manifests: list[Manifest]) -> None:
    """mTLS on the internal API: each workload that calls (or is) the mailstore mounts the Secret named
    after its component where the shared settings look, and only the mailstore pod holds admin."""
    for name in IDENTITIES:
        workload = component(manifests, name)
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        (container,) = containers(workload)
        env = container_env(container, manifests)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        grpc_mount = mounts["/etc/mailstack/grpc"]
        assert grpc_mount["readOnly"] is True
        assert volumes[grpc_mount["name"]]["secret"]["secretName"] == f"mailstack-grpc-{name}", name
        assert volumes[grpc_mount["name"]]["secret"]["defaultMode"] == 0o440
        assert env["MAILSTACK_GRPC_CERT"] == "/etc/mailstack/grpc/tls.crt", name
        assert env["MAILSTACK_GRPC_KEY"] == "/etc/mailstack/grpc/tls.key", name
        assert env["MAILSTACK_GRPC_CA"] == "/etc/mailstack/grpc/ca.crt", name
        admin = [v for v in volumes.values() if v.get("secret", {}).get("secretName") == "mailstack-grpc-admin"]
        assert bool(admin) is (name == "mailstore"), name
    (mailstore,) = containers(component(manifests, "mailstore"))
    env = container_env(mailstore, manifests)
    assert env["MAILSTACK_GRPC_ADMIN_CERT"] == "/etc/mailstack/grpc-admin/tls.crt"
    assert env["MAILSTACK_SEND_LISTEN"] == "0.0.0.0:50052"
    probes = dict(iter_probes(mailstore))
    assert all("grpc" not in probe for probe in probes.values())  # kubelet cannot present a certificate
    services = {s["metadata"]["name"]: s for s in find(manifests, "Service")}
    assert [p["port"] for p in services["mailstore-send"]["spec"]["ports"]] == [50052]
    assert [p["port"] for p in services["mailstore"]["spec"]["ports"]] == [50051]


def test_secrets_are_referenced_never_committed(manifests: list[Manifest]) -> None:
    assert not find(manifests, "Secret")
    referenced: set[str] = set()
    for workload in workloads(manifests):
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
        for container in containers(workload):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
            assert not any("secretRef" in source for source in container.get("envFrom", []))
    assert referenced and referenced <= SECRETS
    for config_map in find(manifests, "ConfigMap"):
        for key, value in config_map["data"].items():
            assert not any(word in key for word in ("SECRET", "PASSWORD", "ACCESS_KEY")), key
            assert "@" not in urlsplit(value).netloc, f"{key} carries credentials"


def test_settings_names_exist_and_metrics_are_scraped_where_served(manifests: list[Manifest]) -> None:
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    for workload, container in mailstack_containers(manifests):
        env = container_env(container, manifests)
        unknown = {k for k in env if k.startswith("MAILSTACK_")} - known
        assert not unknown, f"{workload['metadata']['name']}: not settings: {unknown}"
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env and env["OTEL_SERVICE_NAME"].startswith("mailstack-")
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        metrics_port = int(env["MAILSTACK_METRICS_PORT"])
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == metrics_port
        assert {"name": "metrics", "containerPort": metrics_port} in container["ports"]
        assert container["image"].split("/")[-1].split(":")[0] == "mailstack"


def test_frontends_listen_on_the_ports_they_declare(manifests: list[Manifest]) -> None:
    for frontend in FRONTENDS:
        (container,) = containers(component(manifests, frontend))
        env = container_env(container, manifests)
        settings = {int(v) for k, v in env.items() if k.startswith(f"MAILSTACK_{frontend.upper()}")}
        if frontend == "smtp":
            settings |= {int(env["MAILSTACK_SUBMISSION_PORT"]), int(env["MAILSTACK_SUBMISSIONS_PORT"])}
        declared = {p["containerPort"] for p in container["ports"] if p["name"] != "metrics"}
        assert declared == MAIL_PORTS[frontend] == settings - {0}
        assert container["args"] == ["serve", frontend]


def test_common_labels(manifests: list[Manifest]) -> None:
    for workload in workloads(manifests):
        labels = pod_labels(workload)
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= set(labels)
        if labels["app.kubernetes.io/name"] == "mailstack":
            assert labels["app.kubernetes.io/part-of"] == "mailstack"


def test_the_operator_guide_names_what_the_manifests_use() -> None:
    """k8s/README.md walks an operator through a first install: each Secret the pods need has its create
    command, each public Service and each `kubectl exec` target it names exists in that overlay."""
    guide = (K8S / "README.md").read_text()
    created = set(re.findall(r"create secret (?:tls|generic) (mailstack-[a-z0-9-]+)", guide))
    created |= {f"mailstack-grpc-{n}" for n in (*IDENTITIES, "admin")} if "mailstack-grpc-$n" in guide else set()
    for name in ("production", "single-node"):
        manifests = render(f"overlays/{name}")
        needed = {
            v["secret"]["secretName"]
            for w in workloads(manifests)
            for v in pod_spec(w).get("volumes", [])
            if "secret" in v and not v["secret"].get("optional")
        }
        needed |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for w in workloads(manifests)
            for c in containers(w)
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert needed <= created, f"{name}: no create command for {needed - created}"
        for service in find(manifests, "Service"):
            if service["spec"].get("type") == "LoadBalancer":
                assert f"`{service['metadata']['name']}`" in guide or service["metadata"]["name"] in guide
        (mailstore,) = [w for w in workloads(manifests) if w["metadata"]["name"] == "mailstore"]
        target = {"Deployment": "deploy/mailstore", "StatefulSet": "statefulset/mailstore"}[mailstore["kind"]]
        assert f"exec -it {target} -- mailstack user add" in guide or f"`{target}`" in guide, target
    assert "exec -it deploy/mailstore -- mailstack user add" in guide
    for record in ("MX", "v=spf1", "_domainkey", "_dmarc", "PTR", "_mta-sts"):
        assert record in guide, record
