"""`stratus cluster scale|status`: the replicas of a running gateway (its /admin/cluster API).

    STRATUS_API_KEY=sk-stratus-... stratus cluster scale demo=4
    STRATUS_API_KEY=sk-stratus-... stratus cluster status

The `stratus serve` flags that place replicas as Ray actors are in cli/serve.py; workers are
`stratus worker` (cli/worker.py).
"""

from __future__ import annotations

from typing import Any

import click

from stratus.cli.common import Client, Column, gateway_options, render, show


@click.group()
def cluster() -> None:
    """The replicas of a running gateway."""


def _parse_target(target: str) -> tuple[str, int]:
    name, sep, count = target.partition("=")
    if not sep or not name.strip() or not count.strip().isdigit():
        raise click.BadParameter(f"{target!r}: use MODEL=N, e.g. demo=3")
    return name.strip(), int(count)


@cluster.command("scale")
@click.argument("target", metavar="MODEL=N")
@click.option("--wait/--no-wait", default=True, help="Return once the count is reached. [default: wait]")
@gateway_options(credential="an admin's key (cluster.manage).")
def scale(target: str, wait: bool, url: str, cacert: str | None, output: bool) -> None:
    """Set the number of Ray replicas of MODEL. Down drains first: running requests finish.

    \b
    Example:
      stratus cluster scale demo=4
    """
    model, replicas = _parse_target(target)
    client = Client(url, cacert)
    client.http.timeout = 600  # placing actors may wait for Ray to start them
    data = client.call("POST", "/admin/cluster/scale", {"model": model, "replicas": replicas, "wait": wait})
    show(data, output, _scale_lines)


@cluster.command("status")
@gateway_options(credential="a viewer's, an auditor's or an admin's key (status.read).")
def status(url: str, cacert: str | None, output: bool) -> None:
    """Models, their replicas (health, breaker, load, capacity) and Ray actors."""
    data = Client(url, cacert).call("GET", "/admin/cluster")
    if output != "table":
        render(data if output == "json" else replica_rows(data), output, REPLICA_COLUMNS)
        return
    render(replica_rows(data), "table", REPLICA_COLUMNS, empty="no models")
    ranks = rank_rows(data)
    if ranks:  # replicas split over processes (tensor/pipeline parallel): one row per rank
        render(ranks, "table", RANK_COLUMNS)
    ray = (data.get("ray") or {}).get("models", [])
    if ray:
        rows = [{**a, "model": m["model"], "resources": m["resources"]} for m in ray for a in m["actors"]]
        render(
            rows,
            "table",
            [Column("model"), Column("id", "ACTOR"), Column("node_id", "NODE"), Column("resources")],
        )


REPLICA_COLUMNS = [
    Column("model"),
    Column("model_state", "STATE"),
    Column("id", "REPLICA"),
    Column("kind"),
    Column("state", "HEALTH"),
    Column("breaker"),
    Column("inflight", "IN FLIGHT"),
    Column("running"),
    Column("waiting"),
    Column("layout", "TPxPP"),
]

RANK_COLUMNS = [
    Column("replica"),
    Column("rank"),
    Column("stage"),
    Column("tp_rank", "TP RANK"),
    Column("layers", fmt=lambda v: f"{v[0]}-{v[1] - 1}"),
    Column("node"),
    Column("pid"),
    Column("weight_mib", "WEIGHTS MiB"),
    Column("kv_cache_mib", "KV MiB"),
    Column("max_rss_mib", "PEAK RSS MiB"),
]


def replica_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per replica of /admin/cluster's answer (a model with none: one row of its own)."""
    rows: list[dict[str, Any]] = []
    for m in data["models"]:
        base = {"model": m["model"], "model_state": m["state"], "policy": m["policy"]}
        for r in m["replicas"]:
            rows.append(
                {
                    **base,
                    "id": r["id"],
                    "kind": r["kind"],
                    "state": r["state"],
                    "breaker": r["breaker"]["state"],
                    "inflight": r["inflight"],
                    "running": r["running"],
                    "waiting": r["waiting"],
                    "layout": _layout_text(r.get("layout")),
                }
            )
        if not m["replicas"]:
            rows.append(base)
    return rows


def _layout_text(layout: dict | None) -> str | None:
    if not layout:
        return None
    return f"{layout['tensor_parallel_size']}x{layout['pipeline_parallel_size']}"


def rank_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per rank of each replica split over several processes."""
    return [
        {"replica": r["id"], **rank}
        for m in data["models"]
        for r in m["replicas"]
        if r.get("layout") and len(r["layout"]["ranks"]) > 1
        for rank in r["layout"]["ranks"]
    ]


def _scale_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{data['model']}: {data['replicas']} Ray replicas (asked for {data['requested']})"]
    lines += [f"  {a['id']}  node {a['node_id'] or '-'}  in flight {a['in_flight']}" for a in data["actors"]]
    lines += [f"  failed to start: {e}" for e in data.get("errors", [])]
    return lines
