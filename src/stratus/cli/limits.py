"""`stratus limits`: the limit rules of a running server (its /admin/limits, limits/rules.py).

    export STRATUS_API_KEY=sk-stratus-...
    stratus limits set team ml --model tiny --rpm 60 --tpm 20000 --budget-usd 50
    stratus limits list
    stratus limits delete team ml --model tiny

The key comes from STRATUS_API_KEY, the server from --url or STRATUS_URL. `stratus keys limits`
and `stratus teams limits` set the same rules for one key or team.
"""

from __future__ import annotations

import json

import click

from stratus.cli.common import cacert_option, given, limit_flags, request, url_option


@click.group()
def limits() -> None:
    """Rate limits, token quotas and spend budgets per key, user, team or model."""


@limits.command("set")
@click.argument("scope", type=click.Choice(["key", "user", "team", "model"]))
@click.argument("subject")
@click.option("--model", default=None, help="Only requests for this model.")
@limit_flags
@url_option
@cacert_option
def set_limit(scope, subject, model, url, cacert, **limits):
    """Set (replacing) the limits of SCOPE SUBJECT, e.g. `stratus limits set team ml --rpm 60`."""
    body = {"scope": scope, "subject": subject, "model": model, **given(limits)}
    r = request(url, cacert, "PUT", "/admin/limits", json={k: v for k, v in body.items() if v is not None})
    click.echo(json.dumps(r.json()))


@limits.command("list")
@url_option
@cacert_option
def list_limits(url: str, cacert: str | None) -> None:
    """The limit rules your key may see, one JSON object a line."""
    for rule in request(url, cacert, "GET", "/admin/limits").json()["data"]:
        click.echo(json.dumps(rule))


@limits.command("delete")
@click.argument("scope", type=click.Choice(["key", "user", "team", "model"]))
@click.argument("subject")
@click.option("--model", default=None)
@url_option
@cacert_option
def delete_limit(scope: str, subject: str, model: str | None, url: str, cacert: str | None) -> None:
    """Remove the limits of SCOPE SUBJECT (on --model)."""
    params = {"scope": scope, "subject": subject, **({"model": model} if model else {})}
    request(url, cacert, "DELETE", "/admin/limits", params=params)
    click.echo("deleted")
