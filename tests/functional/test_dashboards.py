"""The Grafana dashboard and the Prometheus alert rules (deploy/) ask only for what the service exports.

Every metric name and label in their PromQL is checked against a live /metrics of the real app;
promtool checks the rules and runs their unit tests (deploy/prometheus/alerts_test.yml).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_config
from webapp import create_app

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "webapp-dashboard.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PROMETHEUS = ROOT / "deploy" / "prometheus"
LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}

# Labels Prometheus attaches to every scraped series itself (le belongs to histogram buckets).
TARGET_LABELS = {"job", "instance"}
# PromQL's aggregations, functions and keywords: words in an expression that are not metric names.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "Inf", "NaN", "inf", "nan",
}
MODIFIERS = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


# --- reading the PromQL out of deploy/ ---------------------------------------------------------


def dashboard_expressions() -> list[str]:
    """Every query in the dashboard: panel targets (rows' nested panels too) and template variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(target["expr"] for target in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        # Grafana's label_values(<series selector>, <label>): the selector is PromQL.
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
        if match:
            found.append(match.group(1))
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _plain(expr: str) -> str:
    """expr without Grafana variables, string literals, durations, numbers and comments."""
    expr = re.sub(r"#[^\n]*", "", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|s|m|h|d|w|y)?\b", "", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: words that are not called, not keywords, not label names."""
    expr = _plain(expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(MODIFIERS, "", expr)  # by (...), on (...): label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        called = expr[match.end():].lstrip().startswith("(")
        if not called and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """[(metric, [(label, operator, value), ...])] for each `metric{...}` in expr."""
    expr = re.sub(r"#[^\n]*", "", expr)
    found = []
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', match.group(2))
        found.append((match.group(1), matchers))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by (...), without (...), on (...) and ignoring (...) clauses."""
    lists = re.findall(MODIFIERS, _plain(expr))
    return {label.strip() for labels in lists for label in labels.split(",") if label.strip()}


def test_the_expression_reader_finds_metric_names_and_skips_functions_labels_and_variables():
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{job="$job", path=~"/x"}[$__rate_interval])))'
        ' > 5 and on (job) sum without (state) (b_connections offset 5m) / ignoring(x) c:recorded:rate5m'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_connections", "c:recorded:rate5m"}
    assert selectors(expr) == [("a_seconds_bucket", [("job", "=", "$job"), ("path", "=~", "/x")])]
    assert grouping_labels(expr) == {"job", "le", "state", "x"}


# --- the live /metrics --------------------------------------------------------------------------


class Exported:
    """What a live /metrics exports: {sample name: {label: {values}}}, and the histogram buckets' bounds."""

    def __init__(self, text: str):
        self.series: dict[str, dict[str, set[str]]] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.types[sample.name] = family.type
                labels = self.series.setdefault(sample.name, {})
                for label, value in sample.labels.items():
                    labels.setdefault(label, set()).add(value)


@pytest.fixture
def exported(database_url: str, db, redis_url: str, apps: list[Flask]) -> Exported:
    """/metrics of the real app with Redis configured (so the breaker gauge exists), after some traffic."""
    app = create_app(make_config(database_url, REDIS_URL=redis_url))
    apps.append(app)
    client = app.test_client()
    created = client.post("/users", json={"email": "dash@example.com", "name": "Dash"}, environ_base=LOOPBACK)
    assert created.status_code == 201
    client.get(f"/users/{created.get_json()['id']}", environ_base=LOOPBACK)
    client.get("/users/987654", environ_base=LOOPBACK)
    client.get("/no/such/route", environ_base=LOOPBACK)
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 404  # a refused scrape
    response = client.get("/metrics", environ_base=LOOPBACK)
    assert response.status_code == 200
    return Exported(response.get_data(as_text=True))


def queries() -> Iterator[tuple[str, str]]:
    for expr in dashboard_expressions():
        yield "dashboard", expr
    for rule in alert_rules():
        yield f"alert {rule['alert']}", rule["expr"]


def test_every_metric_the_dashboard_and_the_alerts_query_is_one_the_service_exports(exported: Exported):
    used = {(where, name) for where, expr in queries() for name in metric_names(expr) if name != "up"}
    unknown = sorted((where, name) for where, name in used if name not in exported.series)
    assert not unknown, f"not exported by /metrics: {unknown}; exported: {sorted(exported.series)}"
    # The check has something to check: each of the service's own families is on the dashboard.
    on_dashboard = {name for expr in dashboard_expressions() for name in metric_names(expr)}
    assert {
        "http_requests_total", "http_request_duration_seconds_bucket", "db_pool_connections",
        "circuit_breaker_state", "metrics_scrapes_refused_total", "webapp_info", "up",
    } <= on_dashboard


def test_every_label_the_queries_match_or_group_on_is_one_the_metrics_carry(exported: Exported):
    problems = []
    for where, expr in queries():
        names = metric_names(expr) - {"up"}
        carried = TARGET_LABELS.union(*(exported.series[name] for name in names if name in exported.series))
        for label in grouping_labels(expr) - carried:
            problems.append(f"{where}: groups by {label!r}, which none of {sorted(names)} carries")
        for name, matchers in selectors(expr):
            labels = exported.series.get(name, {}) if name != "up" else {}
            for label, operator, value in matchers:
                if label in TARGET_LABELS:
                    continue
                if label not in labels:
                    problems.append(f"{where}: {name} has no label {label!r}")
                elif operator == "=" and "$" not in value and value not in labels[label]:
                    seen = sorted(labels[label])
                    problems.append(f"{where}: {name}{{{label}={value!r}}} matches nothing; exported: {seen}")
    assert not problems, "\n".join(problems)


def test_latency_quantiles_keep_the_bucket_label_and_read_the_buckets():
    for where, expr in queries():
        for call in re.findall(r"histogram_quantile\(.*", expr, flags=re.S):
            assert "le" in grouping_labels(call), f"{where}: histogram_quantile without `le` in its by (...)"
            assert metric_names(call) == {"http_request_duration_seconds_bucket"}, where


def test_the_p99_alert_fires_at_a_bucket_boundary_below_the_request_deadline(exported: Exported, database_url: str):
    (rule,) = [rule for rule in alert_rules() if "histogram_quantile(0.99" in rule["expr"]]
    threshold = float(re.search(r"\)\s*>\s*([\d.]+)\s*$", rule["expr"].strip()).group(1))  # type: ignore[union-attr]
    bounds = {float(le) for le in exported.series["http_request_duration_seconds_bucket"]["le"]}
    # On a bucket boundary, "p99 > threshold" means exactly "over 1% of requests slower than it",
    # not an interpolation inside a bucket.
    assert threshold in bounds, f"{threshold} is not one of the histogram's bounds {sorted(bounds)}"
    deadline = make_config(database_url).request_timeout
    assert threshold < deadline, "an alert at the deadline would fire only once requests already get 504"


# --- the files' own shape -----------------------------------------------------------------------


def test_the_dashboard_panels_have_unique_ids_fit_the_grid_and_use_the_chosen_data_source():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["refId"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables


def test_the_rules_select_the_job_the_scrape_config_defines_and_grafana_provisions_the_dashboard():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [scrape["job_name"] for scrape in config["scrape_configs"]]
    assert config["rule_files"] == ["alerts.yml"]
    for rule in alert_rules():
        assert re.findall(r'job="([^"]*)"', rule["expr"]) and set(re.findall(r'job="([^"]*)"', rule["expr"])) == {job}
        assert rule["labels"]["severity"] in {"critical", "warning"}
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "webapp.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus"


# --- promtool -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from PATH or .cache/bin (`make .cache/bin/promtool`); a visible skip without it,
    a failure under REQUIRE_PGBOUNCER=1 (CI's deploy tools), after trying the Makefile's rule."""
    local = ROOT / ".cache" / "bin" / "promtool"
    found = shutil.which("promtool") or (str(local) if local.exists() else None)
    if found is None and os.environ.get("REQUIRE_PGBOUNCER") == "1":
        subprocess.run(["make", "-s", ".cache/bin/promtool"], cwd=ROOT, timeout=300, check=False)
        found = str(local) if local.exists() else None
        if found is None:
            pytest.fail("REQUIRE_PGBOUNCER=1 but promtool is missing and `make .cache/bin/promtool` did not fetch it")
    if found is None:
        pytest.skip("promtool is not installed (`make .cache/bin/promtool` unpacks Debian's prometheus package); "
                    "REQUIRE_PGBOUNCER=1 makes this fail")
    return found


@pytest.mark.parametrize("command", [
    ["check", "rules", "alerts.yml"],
    ["check", "config", "prometheus.yml"],
    ["test", "rules", "alerts_test.yml"],
])
def test_promtool_accepts_the_rules_and_the_config_and_their_unit_tests_pass(promtool: str, command: list[str]):
    result = subprocess.run([promtool, *command], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output and "FAILED" not in output, output


def test_the_alert_unit_tests_cover_every_alert_firing():
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    silent = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")
    }
    every = {rule["alert"] for rule in alert_rules()}
    assert fired == every, f"never shown firing: {every - fired}"
    assert silent == every, f"never shown staying silent: {every - silent}"
