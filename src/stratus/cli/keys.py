"""`stratus keys`: API keys on a running server (its /admin API), from the command line.

    export STRATUS_API_KEY=sk-stratus-...          # a key allowed to do what you ask
    stratus keys create ci --user alice --team ml --expires-in 30d    # secret on the last line
    stratus keys rotate key_0123456789abcdef --grace 1h
    stratus keys revoke key_0123456789abcdef
    stratus keys create ci --user alice --rpm 60 --tpm 10000 --budget-usd 20    # with limits
    stratus keys limits key_0123456789abcdef --model demo --concurrency 2
    stratus keys suspended                         # suspended after an anomaly alert
    stratus keys reinstate key_0123456789abcdef

A secret the server returns is printed on the last line of stdout, alone, so
`stratus keys create ci | tail -n1` captures it; nothing else is ever printed of it.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import click

from stratus.cli.common import (
    Client,
    Column,
    checked_rule,
    describe,
    gateway_options,
    given,
    limit_flags,
    limits_command,
    parse_duration,
    render,
    show,
    when,
)

_OWNERS = "its owner, a team admin of its team, or an admin"
OWN_KEY = f"a key of {_OWNERS}."
_ALL_OF_OWNER = "(all of the owner)"

KEY_COLUMNS = [
    Column("id"),
    Column("name"),
    Column("owner"),
    Column("team"),
    Column("prefix"),
    Column("status"),
    Column("expires_at", "EXPIRES", when),
]
KEY_FIELDS = [
    Column("id"),
    Column("name"),
    Column("owner"),
    Column("team"),
    Column("prefix"),
    Column("roles", fmt=lambda v: ", ".join(v) if v else _ALL_OF_OWNER),
    Column("models", fmt=lambda v: ", ".join(v) if v else _ALL_OF_OWNER),
    Column("status"),
    Column("expires_at", "EXPIRES", when),
    Column("last_used_at", "LAST USED", when),
    Column("limits", fmt=lambda r: describe(r) if r else "-"),
]


def _secret_last(data: dict, output: str) -> None:
    """The key's details, then the secret alone on the last line of stdout (with --output json:
    the whole answer, secret included, as one JSON document)."""
    if output in ("json", "jsonl"):
        render(data, output)
        return
    render(data["key"], output, KEY_FIELDS)
    click.echo("The secret, shown once:", err=True)
    click.echo(data["secret"])
    sys.stdout.flush()


@click.group()
def keys() -> None:
    """Create, list, rotate and revoke API keys on a running server."""


@keys.command("create")
@click.argument("name")
@click.option("--user", default=None, help="The key's owner. [default: the caller]")
@click.option("--team", default=None, help="Bind the key to one of the owner's teams.")
@click.option("--role", "roles", multiple=True, help="Narrow the owner's roles (repeatable).")
@click.option("--model", "models", multiple=True, help="Narrow the owner's models (repeatable).")
@click.option("--expires-in", default=None, help="Lifetime, e.g. 30d, 12h. [default: never expires]")
@limit_flags
@gateway_options(
    credential="a key that may create keys for --user (anyone: their own; a team admin: their team's; an admin)."
)
def keys_create(name, user, team, roles, models, expires_in, url, cacert, output, **limits) -> None:
    """Create a key. Its secret is printed once, on the last line of stdout.

    Limit flags (--rpm, --tpm, ...) set the key's limits on every model (`stratus keys limits`
    sets them per model); bad values are refused before the key is created."""
    body: dict[str, Any] = {"name": name, "user": user, "team": team}
    if roles:
        body["roles"] = list(roles)
    if models:
        body["models"] = list(models)
    if expires_in:
        body["expires_in"] = parse_duration(expires_in)
    if given(limits):
        checked_rule("key", "key_new", None, limits)  # refuse bad limits before creating the key
    client = Client(url, cacert)
    made = client.call("POST", "/admin/keys", body)
    if given(limits):
        key_id = made["key"]["id"]
        try:
            rule = client.call("PUT", "/admin/limits", checked_rule("key", key_id, None, limits))
        except click.ClickException as exc:  # no key without the limits asked for
            try:
                client.call("POST", f"/admin/keys/{quote(key_id, safe='')}/revoke")
                then = f"key {key_id} was revoked again"
            except click.ClickException as failed:
                then = f"key {key_id} was created without them and could not be revoked: {failed.message}"
            raise click.ClickException(f"{exc.message} ({then})") from None
        made["key"]["limits"] = rule
    _secret_last(made, output)


@keys.command("list")
@click.option("--user", default=None, help="Only this owner's keys.")
@click.option("--team", default=None, help="Only keys bound to this team.")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
@gateway_options(credential="any key: you see your own keys, a team admin their team's, an admin every key.")
def keys_list(user, team, active, url, cacert, output) -> None:
    """List the keys you may see (never their secrets)."""
    params = {k: v for k, v in {"user": user, "team": team}.items() if v}
    if active:
        params["include_revoked"] = "false"
    data = Client(url, cacert).call("GET", "/admin/keys", params=params)["data"]
    render(data, output, KEY_COLUMNS, empty="no keys")


@keys.command("get")
@click.argument("key_id")
@gateway_options(credential=OWN_KEY)
def keys_get(key_id, url, cacert, output) -> None:
    """Show one key."""
    render(Client(url, cacert).call("GET", f"/admin/keys/{quote(key_id, safe='')}"), output, KEY_FIELDS)


@keys.command("rotate")
@click.argument("key_id")
@click.option("--grace", default="0", help="How long the old secret keeps working, e.g. 1h. [default: 0]")
@gateway_options(credential=OWN_KEY)
def keys_rotate(key_id, grace, url, cacert, output) -> None:
    """Give a key a new secret (printed on the last line); the old one works for --grace more."""
    path = f"/admin/keys/{quote(key_id, safe='')}/rotate"
    data = Client(url, cacert).call("POST", path, {"grace_seconds": parse_duration(grace)})
    _secret_last(data, output)


@keys.command("revoke")
@click.argument("key_id")
@gateway_options(credential=OWN_KEY)
def keys_revoke(key_id, url, cacert, output) -> None:
    """Revoke a key: refused at once here, by every gateway within the cache TTL."""
    data = Client(url, cacert).call("POST", f"/admin/keys/{quote(key_id, safe='')}/revoke")
    render(data, output, KEY_FIELDS)


@keys.command("limits")
@click.argument("key_id")
@click.option("--model", default=None, help="Only requests for this model. [default: every model]")
@limit_flags
@click.option("--clear", is_flag=True, help="Remove the key's limits (on --model).")
@gateway_options(credential="a key of an admin or of a team admin of the key's team (limits.manage).")
def keys_limits(key_id, model, clear, url, cacert, output, **limits) -> None:
    """Show a key's limits, set them (replacing those on the same --model), or --clear them."""
    limits_command("key", key_id, model, clear, limits, Client(url, cacert), output)


@keys.command("generate")
def keys_generate() -> None:
    """Print a fresh, well-formed key without contacting a server (for STRATUS_ADMIN_KEY).

    Credential: none (nothing is contacted)."""
    from stratus.security.keys import generate

    click.echo(generate().secret)


@keys.command("suspended")
@gateway_options(credential="an auditor's or an admin's key (audit.read).")
def keys_suspended(url, cacert, output) -> None:
    """Keys suspended after an anomaly alert, pending review."""
    data = Client(url, cacert).call("GET", "/admin/suspensions")["data"]
    columns = [
        Column("key_id", "KEY"),
        Column("reason"),
        Column("suspended_at", "SINCE", when),
        Column("detail"),
    ]
    render(data, output, columns, empty="no suspended keys")


@keys.command("reinstate")
@click.argument("key_id")
@gateway_options(credential="an admin's key (security.manage).")
def keys_reinstate(key_id, url, cacert, output) -> None:
    """Lift the suspension of a key (audited)."""
    data = Client(url, cacert).call("POST", f"/admin/keys/{quote(key_id, safe='')}/reinstate")
    show(data, output, lambda d: [f"reinstated {d['key_id']}"])
