"""`stratus status`: the gateway's overview in a terminal: per model its state, replicas up, load,
requests/s, tokens/s, time to first token and per output token (p50, p95), and errors.

    export STRATUS_API_KEY=sk-stratus-...          # a viewer's, an auditor's or an admin's key
    stratus status                                 # one look: rates over --interval seconds
    stratus status --watch                         # refreshed every --interval until Ctrl-C
    stratus status --output json

Models and replicas come from GET /admin/cluster; the rates are the difference of two scrapes of
GET /metrics (stratus_requests_total, stratus_generation_tokens_total, by model) --interval apart,
so they are what the gateway served in that window, whoever sent it; the latency percentiles
come from the histograms' buckets over the same window, interpolated within a bucket as
Prometheus' histogram_quantile does ('-' when no request finished in it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import click

from stratus.cli.common import Client, Column, gateway_options, render

COLUMNS = [
    Column("model"),
    Column("state"),
    Column("replicas_up", "UP", fmt=lambda v: str(v)),
    Column("replicas", "REPLICAS", fmt=lambda v: str(v)),
    Column("inflight", "IN FLIGHT", fmt=lambda v: str(v)),
    Column("waiting", fmt=lambda v: str(v)),
    Column("requests_per_second", "REQ/S", fmt=lambda v: f"{v:.2f}"),
    Column("tokens_per_second", "TOK/S", fmt=lambda v: f"{v:.1f}"),
    Column("ttft_p50", "TTFT P50", fmt=lambda v: _ms(v)),
    Column("ttft_p95", "TTFT P95", fmt=lambda v: _ms(v)),
    Column("tpot_p50", "TPOT P50", fmt=lambda v: _ms(v)),
    Column("errors_per_second", "ERR/S", fmt=lambda v: f"{v:.2f}"),
    Column("errors", "ERRORS", fmt=lambda v: str(v)),
]


HISTOGRAMS = {
    "stratus_time_to_first_token_seconds_bucket": "ttft",
    "stratus_time_per_output_token_seconds_bucket": "tpot",
}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _empty() -> dict[str, Any]:
    return {"requests": 0.0, "errors": 0.0, "tokens": 0.0, "ttft": {}, "tpot": {}}


def counters(text: str) -> dict[str, dict[str, Any]]:
    """From Prometheus text: per model, total requests, 5xx answers, generated tokens, and the
    cumulative bucket counts of the TTFT and TPOT histograms ({upper bound: count})."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, Any]] = defaultdict(_empty)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model") or ""
            if not model:
                continue
            if sample.name == "stratus_requests_total":
                out[model]["requests"] += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    out[model]["errors"] += sample.value
            elif sample.name == "stratus_generation_tokens_total":
                out[model]["tokens"] += sample.value
            elif sample.name in HISTOGRAMS:
                out[model][HISTOGRAMS[sample.name]][float(sample.labels["le"])] = sample.value
    return dict(out)


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The q-quantile of what a histogram observed between two scrapes of its cumulative buckets,
    interpolated linearly inside the bucket it falls in (None: nothing observed)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return lower  # past the last finite bucket: its bound is all that is known
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def overview(
    cluster: dict[str, Any],
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    seconds: float,
) -> list[dict[str, Any]]:
    """One row per model: /admin/cluster's state and replicas, and the rates between two scrapes."""
    rows = []
    zero = _empty()
    models = {m["model"]: m for m in cluster["models"]}
    for name in sorted(set(models) | set(after)):
        m = models.get(name, {"state": "-", "replicas": []})  # served no more, seen in the window
        a, b = after.get(name, zero), before.get(name, zero)
        replicas = m["replicas"]

        def rate(field: str, a=a, b=b) -> float:
            return max(0.0, a[field] - b[field]) / seconds if seconds > 0 else 0.0

        rows.append(
            {
                "model": name,
                "state": m["state"],
                "replicas": len(replicas),
                "replicas_up": sum(1 for r in replicas if r["state"] == "up"),
                "inflight": sum(r.get("inflight", 0) for r in replicas),
                "waiting": sum(r.get("waiting", 0) for r in replicas),
                "requests_per_second": rate("requests"),
                "tokens_per_second": rate("tokens"),
                "ttft_p50": quantile(0.5, b["ttft"], a["ttft"]),
                "ttft_p95": quantile(0.95, b["ttft"], a["ttft"]),
                "tpot_p50": quantile(0.5, b["tpot"], a["tpot"]),
                "errors_per_second": rate("errors"),
                "errors": int(a["errors"]),
            }
        )
    return rows


def measure(client: Client, interval: float) -> list[dict[str, Any]]:
    before = counters(client.raw("GET", "/metrics").text)
    start = time.monotonic()
    time.sleep(interval)
    cluster = client.call("GET", "/admin/cluster")
    after = counters(client.raw("GET", "/metrics").text)
    return overview(cluster, before, after, time.monotonic() - start)


@click.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between the two scrapes the rates are measured over (and between refreshes).",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh every --interval seconds until Ctrl-C (table only; piped: one table after another).",
)
@gateway_options(credential="a viewer's, an auditor's or an admin's key (status.read).")
def status(interval: float, watch: bool, url: str, cacert: str | None, output: str) -> None:
    """Models, replicas up, load, requests/s, tokens/s and errors of a running gateway."""
    client = Client(url, cacert)
    if not watch or output != "table":
        rows = measure(client, interval)
        render({"interval": interval, "models": rows} if output == "json" else rows, output, COLUMNS)
        return
    import sys

    from rich.live import Live

    from stratus.cli.output import print_table, table

    title = f"stratus at {client.url} (rates over {interval:g} s; Ctrl-C to stop)"
    try:
        if not sys.stdout.isatty():  # a log, a pipe: one table after another
            while True:
                print_table(measure(client, interval), COLUMNS, title)
                sys.stdout.flush()
        with Live(table([], COLUMNS, title), auto_refresh=False) as live:
            while True:
                live.update(table(measure(client, interval), COLUMNS, title), refresh=True)
    except KeyboardInterrupt:
        pass
