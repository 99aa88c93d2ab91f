"""The Grafana dashboard and the Prometheus alerts against the proxy they watch: every metric and label they use
is served on a real proxy's /metrics, the dashboard is well-formed and complete, and promtool accepts the rules,
runs their unit tests and parses every dashboard query."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.emulator import Emulator
from proxy.metrics import Metrics
from tests.support import Upstream, proxy_settings

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yaml"
DASHBOARD = ROOT / "deploy/grafana/threescale-proxy.json"
DATASOURCE = "${datasource}"
METRIC = re.compile(r"\bthreescale_proxy_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(threescale_proxy_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
LABEL_REPLACE = re.compile(r',\s*"(\w+)"\s*,\s*"[^"]*"\s*,\s*"\w+"\s*,\s*"[^"]*"\s*\)')
"""label_replace(v, "dst", "replacement", "src", "regex"): the label it creates."""
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container"}
"""Labels Prometheus (or the Operator) puts on every scraped series."""
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

REQUIRED_ALERTS = {
    "ThreescaleProxyReportsFailing": ["threescale_proxy_reports_total"],
    "ThreescaleProxyUsagePendingGrowing": ["threescale_proxy_usage_pending"],
    "ThreescaleProxyBackendErrors": ["threescale_proxy_backend_requests_total"],
    "ThreescaleProxyHighErrorRate": ["threescale_proxy_requests_total"],
    "ThreescaleProxyDown": ["up"],
    "ThreescaleProxyNotReady": ["kube_pod_container_status_ready"],
}
REQUIRED_PANELS = {
    "Traffic by status class": ["threescale_proxy_requests_total"],
    "Latency percentiles (p50/p90/p99)": ["threescale_proxy_request_duration_seconds_bucket"],
    "Upstream vs proxy time": [
        "threescale_proxy_upstream_duration_seconds_bucket",
        "threescale_proxy_request_duration_seconds_bucket",
    ],
    "Auth cache hit ratio by layer": ["threescale_proxy_auth_cache_total"],
    "3scale backend calls by endpoint and status": ["threescale_proxy_backend_requests_total"],
    "3scale backend latency": ["threescale_proxy_backend_duration_seconds_bucket"],
    "Pending usage": ["threescale_proxy_usage_pending"],
    "Report failures (reports by result)": ["threescale_proxy_reports_total"],
    "Rate limited (429)": ["threescale_proxy_limited_total", "threescale_proxy_requests_total"],
    "Errors by kind": ["threescale_proxy_errors_total"],
}


# ------------------------------------------------------------------------------------------------ loading


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"], "no `groups:` list"
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def data_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows hold none; collapsed rows keep theirs inside)."""
    found = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def expressions() -> dict[str, str]:
    """Every PromQL expression of both files, named by where it comes from."""
    exprs = {f"alert {r['alert']}": r["expr"] for r in alert_rules()}
    dash = dashboard()
    for panel in data_panels(dash):
        for target in panel["targets"]:
            exprs[f"panel {panel['id']} {panel['title']!r} {target['refId']}"] = target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs[f"variable {var['name']}"] = var["query"]["query"]
    return exprs


# ------------------------------------------------------------------------------------------------ alerts


def test_alert_rules_are_complete_and_documented() -> None:
    """Each alert has a severity a router can use, a summary and description, and a `for:` against flapping."""
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    by_name = {r["alert"]: r for r in rules}
    for name, metrics in REQUIRED_ALERTS.items():
        assert name in by_name, f"missing alert {name}"
        for metric in metrics:
            assert re.search(rf"\b{metric}\b", by_name[name]["expr"]), f"{name} does not use {metric}"
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), f"{rule['alert']}: for: {rule['for']!r}"
        assert rule["labels"].get("severity") in ("warning", "critical"), rule["alert"]
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]
    failing = by_name["ThreescaleProxyReportsFailing"]["expr"]
    # every failure counts; "ok" and "lease_lost" (another replica took a batch over) are not failures
    assert 'result!~"ok|lease_lost"' in failing.replace(" ", ""), "report failures must count every failure"


# ------------------------------------------------------------------------------------------------ dashboard


def test_dashboard_is_valid_and_has_every_panel() -> None:
    """Importable JSON: unique ids, panels on the 24-column grid without overlap, the panels the issue lists."""
    dash = dashboard()
    assert dash["schemaVersion"] == 39
    assert dash["uid"] == "threescale-proxy" and dash["title"]
    panels = data_panels(dash)
    all_panels = dash["panels"] + [p for r in dash["panels"] if r["type"] == "row" for p in r.get("panels", [])]
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"{panel['title']!r} leaves the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    titles = {p["title"]: p for p in panels}
    assert len(titles) == len(panels), "panel titles must be unique"
    for title, metrics in REQUIRED_PANELS.items():
        assert title in titles, f"missing panel {title!r}"
        used = " ".join(t["expr"] for t in titles[title]["targets"])
        for metric in metrics:
            assert metric in used, f"panel {title!r} does not query {metric}"
    latency = " ".join(t["expr"] for t in titles["Latency percentiles (p50/p90/p99)"]["targets"])
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}," in latency
    assert 'status="429"' in " ".join(t["expr"] for t in titles["Rate limited (429)"]["targets"])


def test_every_dashboard_query_uses_the_datasource_variable() -> None:
    """`${datasource}` everywhere, so the dashboard works on any Grafana whatever its Prometheus is called."""
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("service", "stage"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == DATASOURCE
        assert re.fullmatch(
            rf"label_values\(threescale_proxy_requests_total(\{{.*\}})?, {name}\)", var["query"]["query"]
        )
    for panel in data_panels(dash):
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
            for name in ("job", "service", "stage"):
                if f"${name}" in target["expr"]:
                    assert name in variables, f"{panel['title']!r} uses an undefined variable ${name}"


# ------------------------------------------------------------------------------------------------ /metrics


def declared_labels() -> dict[str, set[str]]:
    """Label names of every family, from the one place metrics are defined (proxy/metrics.py)."""
    families: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        name = getattr(metric, "_name", None)
        if name is None:
            continue
        assert hasattr(metric, "_labelnames"), "prometheus_client changed: update declared_labels()"
        families[name] = set(metric._labelnames)
    return families


def exposed_families(text: str) -> dict[str, str]:
    """`# TYPE name type` of a /metrics page: families are listed even before their first sample."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def resolve(name: str, families: dict[str, str]) -> str | None:
    """The family a series name belongs to: counters and gauges as named, histograms only by a suffix."""
    if families.get(name) in ("counter", "gauge"):
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) == "histogram":
            return base
    return None


async def test_every_metric_and_label_used_is_served_by_the_proxy(
    make_proxy: Callable[..., Any], emulator: Emulator, upstream: Upstream
) -> None:
    """A renamed metric or label would leave a panel empty and an alert silent: both files are checked against
    the /metrics of a real proxy (a histogram only by its _bucket/_count/_sum series, which is what exists)."""
    proxy = await make_proxy(proxy_settings(emulator.url, upstream.url))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics") as resp:
            assert resp.status == 200
            families = exposed_families(await resp.text())
    exprs = expressions()
    used = {name for expr in exprs.values() for name in METRIC.findall(expr)}
    assert len(used) >= 10, f"suspiciously few metrics found: {used}"
    missing = {name for name in used if resolve(name, families) is None}
    assert not missing, f"used by the dashboard or alerts but not on /metrics: {sorted(missing)}; served: {families}"

    labels = declared_labels()
    for where, expr in exprs.items():
        available = set(TARGET_LABELS)
        available.update(LABEL_REPLACE.findall(expr))
        for name in METRIC.findall(expr):
            family = resolve(name, families)
            assert family is not None
            family_key = family.removesuffix("_total")
            assert family_key in labels, f"{family} is not defined in proxy/metrics.py"
            available |= labels[family_key] | ({"le"} if name.endswith("_bucket") else set())
        for name, matchers in SELECTOR.findall(expr):
            family_key = resolve(name, families).removesuffix("_total")  # type: ignore[union-attr]
            own = labels[family_key] | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
            for label in MATCHER.findall(matchers):
                assert label in own, f"{where}: {name} has no label {label!r} (it has {sorted(labels[family_key])})"
        if where.startswith("variable"):
            continue
        for group in BY.findall(expr):
            for label in (g.strip() for g in group.split(",") if g.strip()):
                assert label in available, f"{where}: `by ({group})` names {label!r}, which no metric there has"


def test_label_check_catches_a_wrong_label() -> None:
    """Guards the check above: a selector on a label a family lacks is reported."""
    labels = declared_labels()
    assert labels["threescale_proxy_requests"] == {"service", "method", "status", "stage"}
    assert "status" not in labels["threescale_proxy_auth_cache"]
    assert (
        resolve("threescale_proxy_request_duration_seconds", {"threescale_proxy_request_duration_seconds": "histogram"})
        is None
    )
    assert resolve("threescale_proxy_requests", {"threescale_proxy_requests_total": "counter"}) is None


# ------------------------------------------------------------------------------------------------ promtool


def _check_alerts() -> subprocess.CompletedProcess[str]:
    """scripts/check-alerts.sh: fetches promtool when missing, then `check rules` and `test rules`."""
    return subprocess.run(
        ["bash", str(ROOT / "scripts/check-alerts.sh")], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(ROOT / ".cache/promtool"))
    assert found, "promtool is missing: scripts/check-alerts.sh fetches it from Debian's prometheus package"
    return found


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    """The alert expressions parse, and each alert fires (and stays quiet) on the synthetic series of the tests."""
    result = _check_alerts()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unit Testing" in result.stdout and "FAILED" not in result.stdout
    assert "alert rules ok" in result.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Grafana would show a parse error only when someone opens the panel: parse them all now, as recording
    rules, with the dashboard's variables replaced by what Grafana sends."""
    assert _check_alerts().returncode in (0, 1)  # fetches promtool when missing
    promtool = _promtool()
    rules = []
    for i, (where, expr) in enumerate(sorted(expressions().items())):
        if where.startswith("variable"):
            continue
        concrete = expr.replace("$__rate_interval", "5m")
        concrete = re.sub(r"\$(job|service|stage)\b", ".*", concrete)
        assert "$" not in concrete.replace("${1}", ""), f"{where}: unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    rules_file = tmp_path / "dashboard-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}]})
    )
    assert subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True).returncode != 0
