"""Writes deploy/grafana/stratus.json, the Grafana dashboard of a stratus gateway's /metrics.

    python scripts/grafana_dashboard.py        # after changing a panel here

Every panel's query uses only metrics that /metrics serves (docs/API.md "Metrics");
tests/integration/test_dashboards.py checks that against a live gateway.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "stratus.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'
RATE = "$__rate_interval"


def quantiles(metric: str) -> list[dict]:
    return [
        {
            "expr": f"histogram_quantile({q}, sum by (le, model) (rate({metric}_bucket{{{M}}}[{RATE}])))",
            "legendFormat": f"p{int(q * 100)} {{{{model}}}}",
        }
        for q in (0.5, 0.95, 0.99)
    ]


# (title, unit, targets, description)
ROWS: list[tuple[str, list[tuple[str, str, list[dict], str]]]] = [
    (
        "Traffic",
        [
            (
                "Requests per second by status",
                "reqps",
                [
                    {
                        "expr": f"sum by (status) (rate(stratus_requests_total{{{M}}}[{RATE}]))",
                        "legendFormat": "{{status}}",
                    }
                ],
                "Every HTTP request the gateway answered, by status code.",
            ),
            (
                "Error ratio (5xx)",
                "percentunit",
                [
                    {
                        "expr": f'sum(rate(stratus_requests_total{{status=~"5..",{M}}}[{RATE}])) / '
                        f"sum(rate(stratus_requests_total{{{M}}}[{RATE}]))",
                        "legendFormat": "5xx / all",
                    }
                ],
                "Server errors and refusals for overload (503) over all requests.",
            ),
            (
                "Refusals: 401, 403, 429",
                "reqps",
                [
                    {
                        "expr": f'sum by (status) (rate(stratus_requests_total{{status=~"401|403|429",{M}}}[{RATE}]))',
                        "legendFormat": "{{status}}",
                    }
                ],
                "Unauthenticated, forbidden and rate-limited requests.",
            ),
            (
                "Aborted generations",
                "reqps",
                [
                    {
                        "expr": f"sum by (reason) (rate(stratus_aborted_requests_total{{{M}}}[{RATE}]))",
                        "legendFormat": "{{reason}}",
                    }
                ],
                "Generations stopped before they finished: the client left, or the server aborted them.",
            ),
        ],
    ),
    (
        "Latency",
        [
            (
                "Time to first token",
                "s",
                quantiles("stratus_time_to_first_token_seconds"),
                "Arrival to the first generated token: queueing plus prefill.",
            ),
            (
                "Time per output token",
                "s",
                quantiles("stratus_time_per_output_token_seconds"),
                "Mean time between the output tokens of a request: decode speed as a client sees it.",
            ),
            (
                "End-to-end latency",
                "s",
                quantiles("stratus_e2e_request_latency_seconds"),
                "Arrival to the last byte of a generation request.",
            ),
        ],
    ),
    (
        "Tokens",
        [
            (
                "Tokens per second",
                "short",
                [
                    {
                        "expr": f"sum by (model) (rate(stratus_prompt_tokens_total{{{M}}}[{RATE}]))",
                        "legendFormat": "prompt {{model}}",
                    },
                    {
                        "expr": f"sum by (model) (rate(stratus_generation_tokens_total{{{M}}}[{RATE}]))",
                        "legendFormat": "generated {{model}}",
                    },
                ],
                "Prompt tokens processed and completion tokens generated.",
            ),
            (
                "Response cache hit ratio",
                "percentunit",
                [
                    {
                        "expr": f"sum by (model) (rate(stratus_response_cache_hits_total{{{M}}}[{RATE}])) / "
                        f"sum by (model) (rate(stratus_response_cache_lookups_total{{{M}}}[{RATE}]))",
                        "legendFormat": "{{model}}",
                    }
                ],
                "Deterministic requests answered from the exact-match cache (--response-cache-size).",
            ),
        ],
    ),
    (
        "Engines",
        [
            (
                "Running and waiting requests",
                "short",
                [
                    {
                        "expr": f"sum by (model) (stratus_requests_running{{{M}}})",
                        "legendFormat": "running {{model}}",
                    },
                    {
                        "expr": f"sum by (model) (stratus_requests_waiting{{{M}}})",
                        "legendFormat": "waiting {{model}}",
                    },
                ],
                "Sequences in the engines' batches, and queued for one.",
            ),
            (
                "KV cache usage",
                "percentunit",
                [
                    {
                        "expr": f"max by (model) (stratus_kv_cache_usage_ratio{{{M}}})",
                        "legendFormat": "{{model}}",
                    }
                ],
                "Fraction of KV cache blocks in use (the fullest replica).",
            ),
            (
                "Prefix cache hit rate",
                "percentunit",
                [
                    {
                        "expr": f"sum by (model) (rate(stratus_prefix_cache_hits_total{{{M}}}[{RATE}])) / "
                        f"sum by (model) (rate(stratus_prefix_cache_queries_total{{{M}}}[{RATE}]))",
                        "legendFormat": "{{model}}",
                    },
                    {
                        "expr": f"avg by (model) (stratus_prefix_cache_hit_rate{{{M}}})",
                        "legendFormat": "engine's own {{model}}",
                    },
                ],
                "Prompt tokens found in the prefix cache over those looked up.",
            ),
            (
                "Preemptions per second",
                "short",
                [
                    {
                        "expr": f"sum by (model) (rate(stratus_preemptions_total{{{M}}}[{RATE}]))",
                        "legendFormat": "{{model}}",
                    }
                ],
                "Sequences preempted for lack of KV blocks (recomputed later): the cache is too small.",
            ),
        ],
    ),
]


def build() -> dict:
    panels: list[dict] = []
    next_id, y = 1, 0
    for title, row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        next_id, y = next_id + 1, y + 1
        width = 24 // len(row) if len(row) <= 4 else 6
        for i, (name, unit, targets, description) in enumerate(row):
            panels.append(
                {
                    "id": next_id,
                    "type": "timeseries",
                    "title": name,
                    "description": description,
                    "datasource": DS,
                    "gridPos": {"h": 8, "w": width, "x": (i * width) % 24, "y": y},
                    "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {**t, "refId": chr(ord("A") + j), "datasource": DS} for j, t in enumerate(targets)
                    ],
                }
            )
            next_id += 1
        y += 8
    return {
        "__inputs": [],
        "title": "stratus",
        "uid": "stratus-gateway",
        "description": "A stratus gateway: traffic, latency (TTFT, TPOT), tokens and engines, from /metrics.",
        "tags": ["stratus", "llm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": "label_values(stratus_requests_total, model)", "refId": "models"},
                    "definition": "label_values(stratus_requests_total, model)",
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "refresh": 2,
                    "current": {"text": "All", "value": "$__all"},
                    "hide": 0,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")
