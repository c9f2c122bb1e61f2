"""deploy/prometheus/alerts.yml and deploy/grafana/mainspring-red.json use only metrics we define.

promtool is not available in the test environment, so the files are parsed (YAML, JSON) and every
metric name in their PromQL is looked up among the names ``MetricsRegistry`` exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mainspring.observability import MetricsRegistry

ROOT = Path(__file__).parents[3]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mainspring-red.json"
# A metric selector: a name followed by its label matchers or a range.
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
# Names that look like ours even without braces (a bare `outbox_pending > 3` would hide a typo otherwise).
OUR_PREFIXES = ("http_", "messaging_", "outbox_", "health_", "db_pool_", "cache_")
LABELS = {"le", "job", "route", "status", "method", "topic", "group", "outcome", "check", "relay", "database"}


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def _metric_names(expr: str) -> set[str]:
    text = _strip_strings(expr)
    names = set(SELECTOR.findall(text))
    words = set(re.findall(r"\b[a-z_:][a-z0-9_:]*\b", text))
    names |= {w for w in words if w.startswith(OUR_PREFIXES) and w not in LABELS}
    return names


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = []
    for panel in document["panels"]:
        exprs.extend(target["expr"] for target in panel.get("targets", []))
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert match, variable["definition"]
            exprs.append(match[1] + "{}")
    return exprs


DEFINED = MetricsRegistry().exported_names()


def test_alert_rules_are_well_formed() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning"}
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_alerts_cover_errors_latency_outbox_dead_letters_and_health() -> None:
    exprs = " ".join(rule["expr"] for rule in _alert_rules())
    assert 'http_requests_total{status=~"5.."}' in exprs
    assert "histogram_quantile(0.99" in exprs
    assert "outbox_oldest_age_seconds" in exprs
    assert 'messaging_messages_total{outcome="dead_lettered"}' in exprs
    assert "health_check_status" in exprs


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expressions_use_defined_metrics(rule: dict[str, Any]) -> None:
    used = _metric_names(rule["expr"])
    assert used, f"no metric found in {rule['expr']!r}"
    assert used <= DEFINED, f"undefined metrics: {sorted(used - DEFINED)}"


def test_dashboard_is_valid_json_with_unique_panel_ids() -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    assert document["uid"] == "mainspring-red"
    for panel in document["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24


def test_dashboard_expressions_use_defined_metrics() -> None:
    exprs = _dashboard_exprs()
    assert exprs
    for expr in exprs:
        used = _metric_names(expr)
        assert used, f"no metric found in {expr!r}"
        assert used <= DEFINED, f"{expr!r} uses undefined metrics: {sorted(used - DEFINED)}"


def test_the_name_check_catches_a_typo() -> None:
    used = _metric_names('sum(rate(http_request_total{status=~"5.."}[5m])) + outbox_pendng')
    assert used - DEFINED == {"http_request_total", "outbox_pendng"}
