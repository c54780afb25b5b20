"""`stratus cluster scale|status`: the replicas of a running gateway (its /admin/cluster API).

    STRATUS_API_KEY=sk-stratus-... stratus cluster scale demo=4
    STRATUS_API_KEY=sk-stratus-... stratus cluster status

The `stratus serve` flags that place replicas as Ray actors are in cli/serve.py; workers are
`stratus worker` (cli/worker.py).
"""

from __future__ import annotations

from typing import Any

import click

from stratus.cli.common import Client, connection_options, show


@click.group()
def cluster() -> None:
    """The replicas of a running gateway (needs an admin's STRATUS_API_KEY)."""


def _parse_target(target: str) -> tuple[str, int]:
    name, sep, count = target.partition("=")
    if not sep or not name.strip() or not count.strip().isdigit():
        raise click.BadParameter(f"{target!r}: use MODEL=N, e.g. demo=3")
    return name.strip(), int(count)


@cluster.command("scale")
@click.argument("target", metavar="MODEL=N")
@click.option("--wait/--no-wait", default=True, help="Return once the count is reached. [default: wait]")
@connection_options
def scale(target: str, wait: bool, url: str, cacert: str | None, as_json: bool) -> None:
    """Set the number of Ray replicas of MODEL. Down drains first: running requests finish.

    \b
    Example:
      stratus cluster scale demo=4
    """
    model, replicas = _parse_target(target)
    client = Client(url, cacert)
    client.http.timeout = 600  # placing actors may wait for Ray to start them
    data = client.call("POST", "/admin/cluster/scale", {"model": model, "replicas": replicas, "wait": wait})
    show(data, as_json, _scale_lines)


@cluster.command("status")
@connection_options
def status(url: str, cacert: str | None, as_json: bool) -> None:
    """Models, their replicas (health, breaker, load, capacity) and Ray actors."""
    show(Client(url, cacert).call("GET", "/admin/cluster"), as_json, _status_lines)


def _status_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for m in data["models"]:
        lines.append(
            f"{m['model']}: {m['state']}, policy {m['policy']}, "
            f"{m['retries']} retries, {m['migrations']} migrations"
        )
        for r in m["replicas"]:
            lines.append(
                f"  {r['id']} ({r['kind']}) {r['state']}, breaker {r['breaker']['state']}, "
                f"in flight {r['inflight']}, running {r['running']}, waiting {r['waiting']}"
            )
    for m in (data.get("ray") or {}).get("models", []):
        bounds = f", autoscaled {m['min_replicas']}..{m['max_replicas']}" if m["autoscaled"] else ""
        lines.append(f"ray {m['model']}: {m['replicas']} actors, resources {m['resources']}{bounds}")
        lines += [f"  {a['id']}  node {a['node_id'] or '-'}" for a in m["actors"]]
    return lines


def _scale_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{data['model']}: {data['replicas']} Ray replicas (asked for {data['requested']})"]
    lines += [f"  {a['id']}  node {a['node_id'] or '-'}  in flight {a['in_flight']}" for a in data["actors"]]
    lines += [f"  failed to start: {e}" for e in data.get("errors", [])]
    return lines
