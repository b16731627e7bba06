"""The dashboard (deploy/grafana) and the alert rules (deploy/prometheus) against the bridge.

Every metric their PromQL names must be one a running bridge exports on /metrics: the
expressions are parsed (promql-parser), and the names compared with a scrape of a real
`facespace-bridge run` against the simulator. promtool (Debian package prometheus, installed
by `make system-deps`) checks the rule and config files and runs the rules' unit tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from facespace_bridge.metrics import Metrics
from facespace_bridge.simulator import SimulatorServer

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "facespace-bridge.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
CLI = [sys.executable, "-m", "facespace_bridge"]

# Series Prometheus records itself for every target: not the bridge's to export.
SCRAPE_SERIES = {"up"}
# Grafana's interval variables stand where PromQL wants a duration; any duration parses the same.
GRAFANA_INTERVAL = re.compile(
    r"\$(?:__rate_interval|__interval|__range)\b|\$\{__(?:rate_interval|interval|range)\}"
)
# Grafana variable queries that hold an expression: label_values(EXPR, label), query_result(EXPR).
LABEL_VALUES = re.compile(r"label_values\((?P<expr>.+),\s*[A-Za-z_]\w*\s*\)", re.S)
QUERY_RESULT = re.compile(r"query_result\((?P<expr>.+)\)", re.S)
# What an operator looks for on the dashboard; each is a panel's subject.
DASHBOARD_METRICS = {
    "facespace_bridge_events_published_total",
    "facespace_bridge_camera_lag_seconds",
    "facespace_bridge_checkpoint_timestamp_seconds",
    "facespace_bridge_checkpoint_saved_timestamp_seconds",
    "facespace_bridge_in_flight_events",
    "facespace_bridge_dead_letters_total",
    "facespace_bridge_api_requests_total",
    "facespace_bridge_api_errors_total",
    "facespace_bridge_api_retries_total",
    "facespace_bridge_ha_events_held_back_total",
    "facespace_bridge_sink_connected",
    "facespace_bridge_state",
}


# -- reading PromQL ------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names the selectors of a PromQL expression read (functions, aggregations,
    keywords and label names are not selectors, so they never appear)."""
    tree = promql_parser.parse(GRAFANA_INTERVAL.sub("5m", expr))
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(_selector_name(node, expr))

    promql_parser.walk(tree, visit)
    return names


def _selector_name(selector: promql_parser.VectorSelector, expr: str) -> str:
    if selector.name:
        return selector.name
    groups = [selector.matchers.matchers, *(selector.matchers.or_matchers or [])]
    for matchers in groups:
        for matcher in matchers:
            if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
                return matcher.value
    # A regex on __name__ (or no name at all) could match anything: nothing to check it against.
    raise ValueError(f"a selector without one metric name cannot be checked: {expr}")


def variable_expression(query: str | dict[str, Any]) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query, if it has any."""
    text = query.get("query", "") if isinstance(query, dict) else query
    for pattern in (LABEL_VALUES, QUERY_RESULT):
        match = pattern.fullmatch(text.strip())
        if match:
            return match.group("expr")
    if text.strip().startswith("label_values("):  # label_values(label): no expression
        return None
    raise ValueError(f"unknown variable query: {text!r}")


def panels(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) for every panel query and variable query of a dashboard."""
    found = []
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            expr = variable_expression(variable["query"])
            if expr is not None:
                found.append((f"variable {variable['name']}", expr))
    return found


def rule_expressions(rules: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def exported_names(exposition: str) -> set[str]:
    """The series names a Prometheus scrape of `exposition` can hold. A labelled metric with
    no children yet shows only its # HELP and # TYPE lines: its names still count."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def unexported(expressions: Iterable[tuple[str, str]], exported: set[str]) -> dict[str, set[str]]:
    """Where each expression names a metric that is neither exported nor Prometheus's own."""
    missing = {}
    for where, expr in expressions:
        unknown = metric_names(expr) - exported - SCRAPE_SERIES
        if unknown:
            missing[where] = unknown
    return missing


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def load_rules() -> dict[str, Any]:
    return yaml.safe_load(ALERTS.read_text())


# -- the check itself ----------------------------------------------------------------------------


def test_metric_names_are_the_selectors_not_functions_keywords_or_labels() -> None:
    expr = (
        'sum by (sink, type) (rate(facespace_bridge_made_up_total{job=~"$job", sink!="x"}[$__rate_interval]))'
        " / on (instance) group_left max without (camera) (other_metric offset 5m)"
        " and time() - absent(up) > bool 3 or label_replace(vector(1), 'a', 'b', 'c', 'd')"
        ' unless {__name__="named_by_a_matcher", le="1"} @ end()'
        " or histogram_quantile(0.9, sum by (le) (rate(some_seconds_bucket[${__range}])))"
    )
    assert metric_names(expr) == {
        "facespace_bridge_made_up_total",
        "other_metric",
        "up",
        "named_by_a_matcher",
        "some_seconds_bucket",
    }
    with pytest.raises(ValueError, match="one metric name"):
        metric_names('{__name__=~"facespace_bridge_.+"}')
    assert variable_expression('label_values(some_gauge{job=~"$job"}, instance)') == 'some_gauge{job=~"$job"}'
    assert variable_expression({"query": "label_values(instance)"}) is None


def test_the_check_fails_on_a_metric_the_bridge_does_not_export() -> None:
    exported = exported_names(Metrics().render().decode())
    expressions = [
        ("made up", "rate(facespace_bridge_made_up_total[5m])"),
        ("counter without _total", "increase(facespace_bridge_dead_letters[5m])"),
        ("exported", "rate(facespace_bridge_dead_letters_total[5m]) > 0 and up == 1"),
        ("labelled, no children yet", "facespace_bridge_sink_connected == 0"),
    ]
    assert unexported(expressions, exported) == {
        "made up": {"facespace_bridge_made_up_total"},
        "counter without _total": {"facespace_bridge_dead_letters"},
    }


def serve_bridge(
    simulator: SimulatorServer, tmp_path: Path, log: IO[bytes]
) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE", "KAFKA", "MQTT"))}
    env = {
        **base,
        "FACESPACE_API_KEY": simulator.api_key,
        "FACESPACE_API_URL": simulator.base_url,
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        [*CLI, "run", "--broker", "file", "--output", str(tmp_path / "out.jsonl"),
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
         "--tail-interval", "0.3", "--refresh", "0.3", "--backfill-from", "24/10/23"],
        env=env, stderr=log,
    )  # fmt: skip
    return proc, port


PUBLISHED = 'facespace_bridge_events_published_total{sink="file",type="sighting"}'


def scrape_when_publishing(proc: subprocess.Popen[bytes], port: int) -> str:
    """/metrics once the bridge is ready (sinks started, the API answered) and has published
    sightings, so the scrape is a working bridge's."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                exposition = httpx.get(f"http://127.0.0.1:{port}/metrics").text
                if PUBLISHED in exposition:
                    return exposition
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the bridge published nothing (exit code {proc.poll()})")


def test_dashboard_and_rules_name_only_metrics_the_running_bridge_exports(
    simulator: SimulatorServer, tmp_path: Path
) -> None:
    with (tmp_path / "bridge.log").open("wb") as log:
        proc, port = serve_bridge(simulator, tmp_path, log)
        try:
            exposition = scrape_when_publishing(proc, port)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    assert proc.returncode == 0, (tmp_path / "bridge.log").read_text()
    exported = exported_names(exposition)

    dashboard, rules = dashboard_expressions(load_dashboard()), rule_expressions(load_rules())
    assert len(dashboard) >= 15 and len(rules) >= 9  # the parse found the expressions
    assert unexported(dashboard, exported) == {}, "the dashboard names metrics the bridge does not export"
    assert unexported(rules, exported) == {}, "the alert rules name metrics the bridge does not export"


# -- the dashboard -------------------------------------------------------------------------------


def datasource_references(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_references(item)


def test_dashboard_is_provisionable_and_picks_its_datasource_by_variable() -> None:
    dashboard = load_dashboard()
    # Provisioning reads the plain model: no import placeholders, no database id.
    assert "__inputs" not in dashboard and dashboard["id"] is None
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    references = list(datasource_references(dashboard))
    assert references and all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in references)

    ids = [panel["id"] for panel in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"{panel['title']} queries nothing"
            # Every query follows the job and instance the viewer picked.
            for target in panel["targets"]:
                assert '=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_shows_each_metric_operators_watch() -> None:
    shown = set().union(*(metric_names(expr) for _, expr in dashboard_expressions(load_dashboard())))
    assert shown >= DASHBOARD_METRICS, sorted(DASHBOARD_METRICS - shown)
    exprs = " ".join(expr for _, expr in dashboard_expressions(load_dashboard()))
    assert 'type="presence"' in exprs  # presence changes have a panel of their own
    assert "time() - " in exprs  # checkpoint ages, not raw timestamps


# -- the rules and promtool ----------------------------------------------------------------------


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: `make system-deps` installs it (Debian package prometheus)")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions(load_rules()))} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests compare what fires (labels and rendered annotations), so they can fail."""
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    wrong = ALERT_TESTS.read_text().replace("instance: bridge:9108", "instance: elsewhere:9108", 1)
    (tmp_path / ALERT_TESTS.name).write_text(wrong)
    result = promtool("test", "rules", tmp_path / ALERT_TESTS.name)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_promtool_checks_the_prometheus_config_and_the_rules_it_loads() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_every_alert_fires_in_a_unit_test_and_is_labelled_for_routing() -> None:
    alerts = {rule["alert"]: rule for group in load_rules()["groups"] for rule in group["rules"]}
    assert {
        "FaceSpaceBridgeDown",
        "FaceSpaceBridgeCheckpointNotSaved",
        "FaceSpaceBridgeCheckpointNotAdvancing",
        "FaceSpaceBridgeLagHigh",
        "FaceSpaceBridgeDeadLetters",
        "FaceSpaceBridgeAPIErrors",
        "FaceSpaceBridgeSinkDisconnected",
        "FaceSpaceBridgeDegraded",
        "FaceSpaceBridgeFailed",
    } <= set(alerts)
    unit_tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert unit_tests["rule_files"] == [ALERTS.name]
    fired = {
        case["alertname"]
        for test in unit_tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert "$labels." in annotations["summary"] + annotations["description"], name
