"""`stratus usage`: usage totals of a running server (its /admin/usage, api/routes/usage.py).

export STRATUS_API_KEY=sk-stratus-...
stratus usage --by team,day --since 2026-11-01 --output csv > usage.csv
"""

from __future__ import annotations

import sys

import click

from stratus.cli.common import Client, Column, deprecated_alias, gateway_options, render, terminal_safe

TOTALS = ["requests", "refused", "prompt_tokens", "completion_tokens", "cost_usd"]


@click.command()
@click.option(
    "--by", default="model", show_default=True, help="Group by any of key,user,team,model,day,status."
)
@click.option("--since", default=None, help="Start: ISO date/time or Unix seconds. [default: 30 days ago]")
@click.option("--until", default=None, help="End (exclusive). [default: now]")
@deprecated_alias(
    "--format", "--output", value=None, dest="output", type=click.Choice(["table", "json", "csv"])
)
@gateway_options(
    credential="any key: a member sees their own usage, a team admin their team's, an auditor "
    "or an admin everyone's."
)
def usage(by: str, since: str | None, until: str | None, url: str, cacert: str | None, output: str) -> None:
    """Usage totals (requests, tokens, cost) that your key may see."""
    params = {"by": by, "format": "csv" if output == "csv" else "json"}
    params.update({k: v for k, v in (("since", since), ("until", until)) if v})
    r = Client(url, cacert).raw("GET", "/admin/usage", params=params)
    if output == "csv":  # the server's own CSV (api/routes/usage.py), as it came
        sys.stdout.write(terminal_safe(r.text) if sys.stdout.isatty() else r.text)
        return
    data = r.json()
    if output == "json":
        render(data, "json")
        return
    render(
        data["data"],
        output,
        [*(Column(c) for c in data["by"]), *(Column(c) for c in TOTALS)],
        empty="no usage",
    )
