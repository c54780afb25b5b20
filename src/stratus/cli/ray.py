"""Ray on the command line: the `stratus serve` flags that place replicas as Ray actors, and
`stratus cluster scale`, which changes their number on a running gateway.

    stratus serve --ray-address auto --replicas demo=2 --replica-resources 'demo={"CPU": 1}'
    STRATUS_API_KEY=sk-stratus-... stratus cluster scale demo=4
    STRATUS_API_KEY=sk-stratus-... stratus cluster status
"""

from __future__ import annotations

from typing import Any

import click


def _joined(separator: str):
    """Repeated flags become one setting string, as STRATUS_* variables and stratus.toml give it."""

    def callback(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> str | None:
        return separator.join(values) if values else None

    return callback


def ray_options(func):
    """The `stratus serve` flags of Ray replicas (names match config.Settings)."""
    options = [
        click.option(
            "--ray-address",
            default=None,
            help="Serve every model with Ray actors: 'auto' (the Ray cluster of this machine, after "
            "`ray start`), 'HOST:6379' (a head's GCS) or 'local' (start Ray here). Ray Client "
            "('ray://') cannot stream and is refused.",
        ),
        click.option(
            "--replicas",
            multiple=True,
            metavar="MODEL=N",
            callback=_joined(","),
            help="Ray replicas of a model (repeat per model; a bare N: every model). [default: 1]",
        ),
        click.option(
            "--replica-resources",
            multiple=True,
            metavar="MODEL=JSON",
            callback=_joined(";"),
            help='Ray resources per replica, e.g. demo=\'{"CPU": 2, "GPU": 1, "node_type_a": 1}\' '
            '(custom names pick node types). [default: {"CPU": 1}]',
        ),
        click.option(
            "--min-replicas",
            default=None,
            metavar="MODEL=N",
            help="With --max-replicas: autoscale between them on queue depth per replica.",
        ),
        click.option("--max-replicas", default=None, metavar="MODEL=N", help="Upper bound of autoscaling."),
        click.option(
            "--autoscale-target",
            type=float,
            default=None,
            help="Running + waiting requests per replica the autoscaler aims for. [default: 4]",
        ),
        click.option(
            "--autoscale-cooldown",
            type=float,
            default=None,
            help="Seconds after a change before the autoscaler changes the count again. [default: 30]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
def cluster() -> None:
    """The replicas of a running gateway (needs an admin's STRATUS_API_KEY)."""


def _parse_target(target: str) -> tuple[str, int]:
    name, sep, count = target.partition("=")
    if not sep or not name.strip() or not count.strip().isdigit():
        raise click.BadParameter(f"{target!r}: use MODEL=N, e.g. demo=3")
    return name.strip(), int(count)


def _scale_command():
    from stratus.cli.admin import Client, _connection, _show

    @cluster.command("scale")
    @click.argument("target", metavar="MODEL=N")
    @click.option("--wait/--no-wait", default=True, help="Return once the count is reached. [default: wait]")
    @_connection
    def scale(target: str, wait: bool, url: str, cacert: str | None, as_json: bool) -> None:
        """Set the number of Ray replicas of MODEL. Down drains first: running requests finish.

        \b
        Example:
          stratus cluster scale demo=4
        """
        model, replicas = _parse_target(target)
        client = Client(url, cacert)
        client.http.timeout = 600  # placing actors may wait for Ray to start them
        data = client.call(
            "POST", "/admin/cluster/scale", {"model": model, "replicas": replicas, "wait": wait}
        )
        _show(data, as_json, _scale_lines)

    return scale


def _status_command():
    from stratus.cli.admin import Client, _connection, _show

    @cluster.command("status")
    @_connection
    def status(url: str, cacert: str | None, as_json: bool) -> None:
        """Models, their replicas (health, breaker, load, capacity) and Ray actors."""
        _show(Client(url, cacert).call("GET", "/admin/cluster"), as_json, _status_lines)

    return status


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


def register(main: click.Group) -> None:
    _scale_command()
    _status_command()
    main.add_command(cluster)
