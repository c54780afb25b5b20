"""The Grafana dashboard and the Prometheus alert rules in deploy/ use only metrics that a live
gateway's /metrics serves (after a request, so that histograms and counters have samples).
With promtool installed (Debian's prometheus package) the rules also pass `promtool check rules`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.grafana_dashboard import build
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "stratus.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
# Prometheus's own series, not the gateway's: `up` of the scrape job.
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "avg", "le", "without",
    "on", "ignoring", "and", "or", "unless", "label_values", "count",
}  # fmt: skip


def _dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, LABEL): the series is METRIC
            exprs.append(re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"]).group(1))
    return exprs


def _alert_exprs(rules: dict) -> list[str]:
    return [r["expr"] for group in rules["groups"] for r in group["rules"]]


def _metric_names(expr: str) -> set[str]:
    """Names used as series selectors: an identifier followed by `{`, `[`, `)`, `,`, an
    operator or the end, that is not a function, a keyword, a label or a Grafana variable."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\$\w+", "", expr)  # $__rate_interval, $model
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+|[smhdw]", n)}


def _served_names(text: str) -> set[str]:
    """Every series name /metrics shows: its samples, and the series a declared family has
    (a labelled counter with no sample yet is declared with its TYPE line)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboard_file_is_what_the_script_builds():
    assert json.loads(DASHBOARD.read_text()) == build(), "run: python scripts/grafana_dashboard.py"


def test_dashboard_and_alerts_use_only_metrics_that_metrics_serves(http):
    # One generation first (a complete and a streamed one), so histograms and engine gauges are there.
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert http.post("/v1/chat/completions", json={**body, "stream": True}).status_code == 200
    text = http.get("/metrics").text
    served = _served_names(text)
    assert "stratus_time_to_first_token_seconds_bucket" in served  # the request was observed

    dashboard = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(ALERTS.read_text())
    used: dict[str, set[str]] = {}
    for where, exprs in (("dashboard", _dashboard_exprs(dashboard)), ("alerts", _alert_exprs(rules))):
        assert exprs, where
        for expr in exprs:
            names = _metric_names(expr)
            assert names, (where, expr)  # every query reads some series
            for name in names:
                used.setdefault(name, set()).add(where)
    missing = {n: w for n, w in used.items() if n not in served and n not in PROMETHEUS_OWN}
    assert not missing, f"not served by /metrics: {missing}"
    assert {n for n in used if n.startswith("stratus_")} >= {
        "stratus_requests_total",
        "stratus_time_to_first_token_seconds_bucket",
        "stratus_time_per_output_token_seconds_bucket",
        "stratus_requests_waiting",
        "stratus_kv_cache_usage_ratio",
    }
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["alert"].startswith("Stratus") and rule["labels"]["severity"] in (
            "critical",
            "warning",
            "info",
        )
        assert rule["annotations"]["summary"]


def test_metric_names_are_read_from_queries():
    expr = 'histogram_quantile(0.95, sum by (le, model) (rate(stratus_x_bucket{model=~"$model"}[$__rate_interval])))'
    assert _metric_names(expr) == {"stratus_x_bucket"}
    assert _metric_names("sum(rate(a_total[5m])) / sum(rate(b_total[5m])) > 0.05") == {"a_total", "b_total"}
    assert _metric_names('up{job="stratus"} == 0') == {"up"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) not installed")
def test_promtool_accepts_the_rules():
    done = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
