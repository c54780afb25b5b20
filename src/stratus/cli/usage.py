"""`stratus usage` and `stratus limits`: usage totals and limit rules of a running server.

    export STRATUS_API_KEY=sk-stratus-...
    stratus usage --by team,day --since 2026-11-01 --format csv > usage.csv
    stratus limits set team ml --model tiny --rpm 60 --tpm 20000 --budget-usd 50
    stratus limits list
    stratus limits delete team ml --model tiny

Both talk to /admin/usage and /admin/limits (api/routes/usage.py) like `stratus keys` does,
with the key from STRATUS_API_KEY and the server from --url or STRATUS_URL. `limit_options`
adds the serve flags: --redis-url, --limits-fail-open, --model-prices, --metering.
"""

from __future__ import annotations

import json
import os
import sys

import click
import httpx

from stratus.cli.admin import DEFAULT_URL
from stratus.cli.limit_flags import given, limit_flags


def limit_options(func):
    """The `stratus serve` flags of limits and metering (names match config.Settings)."""
    options = [
        click.option(
            "--redis-url",
            default=None,
            help="Redis for limit counters shared by several gateways (redis://host:6379/0). "
            "[default: in process; env: STRATUS_REDIS_URL]",
        ),
        click.option(
            "--limits-fail-open/--limits-fail-closed",
            default=None,
            help="When Redis is unreachable, apply per-process limits instead of refusing with 503. "
            "[default: fail closed]",
        ),
        click.option(
            "--model-prices",
            default=None,
            help="USD per million prompt/completion tokens, for costs and budgets: 'tiny=0.5/1.5,big=3/15'.",
        ),
        click.option(
            "--metering/--no-metering",
            default=None,
            help="Limits and the usage ledger. [default: on with access control, off with --no-auth]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _request(url: str, cacert: str | None, method: str, path: str, **kwargs) -> httpx.Response:
    key = os.environ.get("STRATUS_API_KEY", "").strip()
    if not key:
        raise click.ClickException("set STRATUS_API_KEY to an API key of the server")
    try:
        r = httpx.request(
            method,
            url.rstrip("/") + path,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
            verify=cacert or True,
            **kwargs,
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        raise click.ClickException(f"{r.status_code}: {message}")
    return r


_url = click.option("--url", envvar="STRATUS_URL", default=DEFAULT_URL, help="The server. [env: STRATUS_URL]")
_cacert = click.option("--cacert", envvar="STRATUS_CA_CERT", default=None, help="CA certificate for HTTPS.")


@click.command()
@click.option(
    "--by", default="model", show_default=True, help="Group by any of key,user,team,model,day,status."
)
@click.option("--since", default=None, help="Start: ISO date/time or Unix seconds. [default: 30 days ago]")
@click.option("--until", default=None, help="End (exclusive). [default: now]")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
@_url
@_cacert
def usage(by: str, since: str | None, until: str | None, fmt: str, url: str, cacert: str | None) -> None:
    """Usage totals (requests, tokens, cost) that your key may see."""
    params = {"by": by, "format": "csv" if fmt == "csv" else "json"}
    params.update({k: v for k, v in (("since", since), ("until", until)) if v})
    r = _request(url, cacert, "GET", "/admin/usage", params=params)
    if fmt == "csv":
        sys.stdout.write(r.text)
        return
    data = r.json()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    columns = [*data["by"], "requests", "refused", "prompt_tokens", "completion_tokens", "cost_usd"]
    rows = [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in data["data"]]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    for line in [columns, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


@click.group()
def limits() -> None:
    """Rate limits, token quotas and spend budgets per key, user, team or model."""


@limits.command("set")
@click.argument("scope", type=click.Choice(["key", "user", "team", "model"]))
@click.argument("subject")
@click.option("--model", default=None, help="Only requests for this model.")
@limit_flags
@_url
@_cacert
def set_limit(scope, subject, model, url, cacert, **limits):
    """Set (replacing) the limits of SCOPE SUBJECT, e.g. `stratus limits set team ml --rpm 60`."""
    body = {"scope": scope, "subject": subject, "model": model, **given(limits)}
    r = _request(url, cacert, "PUT", "/admin/limits", json={k: v for k, v in body.items() if v is not None})
    click.echo(json.dumps(r.json()))


@limits.command("list")
@_url
@_cacert
def list_limits(url: str, cacert: str | None) -> None:
    """The limit rules your key may see, one JSON object a line."""
    for rule in _request(url, cacert, "GET", "/admin/limits").json()["data"]:
        click.echo(json.dumps(rule))


@limits.command("delete")
@click.argument("scope", type=click.Choice(["key", "user", "team", "model"]))
@click.argument("subject")
@click.option("--model", default=None)
@_url
@_cacert
def delete_limit(scope: str, subject: str, model: str | None, url: str, cacert: str | None) -> None:
    """Remove the limits of SCOPE SUBJECT (on --model)."""
    params = {"scope": scope, "subject": subject, **({"model": model} if model else {})}
    _request(url, cacert, "DELETE", "/admin/limits", params=params)
    click.echo("deleted")


def register(main: click.Group) -> None:
    main.add_command(usage)
    main.add_command(limits)
