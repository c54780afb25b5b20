"""`stratus usage`: usage totals of a running server (its /admin/usage, api/routes/usage.py).

    export STRATUS_API_KEY=sk-stratus-...
    stratus usage --by team,day --since 2026-11-01 --format csv > usage.csv

The key comes from STRATUS_API_KEY, the server from --url or STRATUS_URL.
"""

from __future__ import annotations

import json
import sys

import click

from stratus.cli.common import cacert_option, request, terminal_safe, url_option


@click.command()
@click.option(
    "--by", default="model", show_default=True, help="Group by any of key,user,team,model,day,status."
)
@click.option("--since", default=None, help="Start: ISO date/time or Unix seconds. [default: 30 days ago]")
@click.option("--until", default=None, help="End (exclusive). [default: now]")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
@url_option
@cacert_option
def usage(by: str, since: str | None, until: str | None, fmt: str, url: str, cacert: str | None) -> None:
    """Usage totals (requests, tokens, cost) that your key may see."""
    params = {"by": by, "format": "csv" if fmt == "csv" else "json"}
    params.update({k: v for k, v in (("since", since), ("until", until)) if v})
    r = request(url, cacert, "GET", "/admin/usage", params=params)
    if fmt == "csv":
        sys.stdout.write(terminal_safe(r.text) if sys.stdout.isatty() else r.text)
        return
    data = r.json()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    columns = [*data["by"], "requests", "refused", "prompt_tokens", "completion_tokens", "cost_usd"]
    rows = [
        [terminal_safe(str(row.get(c) if row.get(c) is not None else "-")) for c in columns]
        for row in data["data"]
    ]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    for line in [columns, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
