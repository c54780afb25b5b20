"""`stratus limits`: the limit rules of a running server (its /admin/limits, limits/rules.py).

    export STRATUS_API_KEY=sk-stratus-...
    stratus limits set team ml --model tiny --rpm 60 --tpm 20000 --budget-usd 50
    stratus limits list                      # a table; --output json|jsonl|csv for scripts
    stratus limits delete team ml --model tiny

`stratus keys limits` and `stratus teams limits` set the same rules for one key or team.
"""

from __future__ import annotations

import click

from stratus.cli.common import (
    RULE_COLUMNS,
    Client,
    checked_rule,
    describe,
    gateway_options,
    limit_flags,
    render,
    show,
)

MANAGE = "an admin's key, or a team admin's for their team and its members and keys (limits.manage)."


@click.group()
def limits() -> None:
    """Rate limits, token quotas and spend budgets per key, user, team or model."""


@limits.command("set")
@click.argument("scope", type=click.Choice(["key", "user", "team", "model"]))
@click.argument("subject")
@click.option("--model", default=None, help="Only requests for this model.")
@limit_flags
@gateway_options(credential=MANAGE)
def set_limit(scope, subject, model, url, cacert, output, **limits):
    """Set (replacing) the limits of SCOPE SUBJECT, e.g. `stratus limits set team ml --rpm 60`."""
    rule = Client(url, cacert).call("PUT", "/admin/limits", checked_rule(scope, subject, model, limits))
    show(rule, output, lambda r: [describe(r)])


@limits.command("list")
@gateway_options(
    credential="a key that may read usage (usage.read): admins see every rule, team admins their team's."
)
def list_limits(url: str, cacert: str | None, output: str) -> None:
    """The limit rules your key may see."""
    render(Client(url, cacert).call("GET", "/admin/limits")["data"], output, RULE_COLUMNS, empty="no limits")


@limits.command("delete")
@click.argument("scope", type=click.Choice(["key", "user", "team", "model"]))
@click.argument("subject")
@click.option("--model", default=None, help="Only the rule on this model. [default: the rule on every model]")
@gateway_options(credential=MANAGE, output=False)
def delete_limit(scope: str, subject: str, model: str | None, url: str, cacert: str | None) -> None:
    """Remove the limits of SCOPE SUBJECT (on --model)."""
    params = {"scope": scope, "subject": subject, **({"model": model} if model else {})}
    Client(url, cacert).call("DELETE", "/admin/limits", params=params)
    click.echo("deleted")
