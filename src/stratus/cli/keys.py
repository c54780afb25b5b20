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
    checked_rule,
    connection_options,
    describe,
    given,
    limit_flags,
    limits_command,
    parse_duration,
    show,
    when,
)


def _key_lines(k: dict) -> list[str]:
    """A key (as /admin/keys returns it), one field a line."""
    return [
        f"id:       {k['id']}",
        f"name:     {k['name']}",
        f"owner:    {k['owner']}" + (f"  team: {k['team']}" if k.get("team") else ""),
        f"prefix:   {k['prefix']}",
        f"roles:    {', '.join(k['roles']) if k['roles'] else '(all of the owner)'}",
        f"models:   {', '.join(k['models']) if k['models'] else '(all of the owner)'}",
        f"status:   {k['status']}  expires: {when(k['expires_at'])}  last used: {when(k['last_used_at'])}",
    ] + ([f"limits:   {describe(k['limits'])}"] if k.get("limits") else [])


def _secret_last(data: dict, as_json: bool) -> None:
    """The key's details, then the secret alone on the last line of stdout."""
    show(data["key"], as_json, _key_lines)
    if not as_json:
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
@connection_options
def keys_create(name, user, team, roles, models, expires_in, url, cacert, as_json, **limits) -> None:
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
    _secret_last(made, as_json)


@keys.command("list")
@click.option("--user", default=None, help="Only this owner's keys.")
@click.option("--team", default=None, help="Only keys bound to this team.")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
@connection_options
def keys_list(user, team, active, url, cacert, as_json) -> None:
    """List the keys you may see (never their secrets)."""
    params = {k: v for k, v in {"user": user, "team": team}.items() if v}
    if active:
        params["include_revoked"] = "false"
    data = Client(url, cacert).call("GET", "/admin/keys", params=params)["data"]

    def lines(rows):
        yield f"{'ID':<22} {'NAME':<20} {'OWNER':<14} {'TEAM':<10} {'PREFIX':<24} {'STATUS':<8} EXPIRES"
        for k in rows:
            yield (
                f"{k['id']:<22} {k['name'][:20]:<20} {k['owner']:<14} {k['team'] or '-':<10} "
                f"{k['prefix'] or '-':<24} {k['status']:<8} {when(k['expires_at'])}"
            )

    show(data, as_json, lines)


@keys.command("get")
@click.argument("key_id")
@connection_options
def keys_get(key_id, url, cacert, as_json) -> None:
    """Show one key."""
    show(Client(url, cacert).call("GET", f"/admin/keys/{quote(key_id, safe='')}"), as_json, _key_lines)


@keys.command("rotate")
@click.argument("key_id")
@click.option("--grace", default="0", help="How long the old secret keeps working, e.g. 1h. [default: 0]")
@connection_options
def keys_rotate(key_id, grace, url, cacert, as_json) -> None:
    """Give a key a new secret (printed on the last line); the old one works for --grace more."""
    path = f"/admin/keys/{quote(key_id, safe='')}/rotate"
    data = Client(url, cacert).call("POST", path, {"grace_seconds": parse_duration(grace)})
    _secret_last(data, as_json)


@keys.command("revoke")
@click.argument("key_id")
@connection_options
def keys_revoke(key_id, url, cacert, as_json) -> None:
    """Revoke a key: refused at once here, by every gateway within the cache TTL."""
    data = Client(url, cacert).call("POST", f"/admin/keys/{quote(key_id, safe='')}/revoke")
    show(data, as_json, _key_lines)


@keys.command("limits")
@click.argument("key_id")
@click.option("--model", default=None, help="Only requests for this model. [default: every model]")
@limit_flags
@click.option("--clear", is_flag=True, help="Remove the key's limits (on --model).")
@connection_options
def keys_limits(key_id, model, clear, url, cacert, as_json, **limits) -> None:
    """Show a key's limits, set them (replacing those on the same --model), or --clear them."""
    limits_command("key", key_id, model, clear, limits, Client(url, cacert), as_json)


@keys.command("generate")
def keys_generate() -> None:
    """Print a fresh, well-formed key without contacting a server (for STRATUS_ADMIN_KEY)."""
    from stratus.security.keys import generate

    click.echo(generate().secret)


@keys.command("suspended")
@connection_options
def keys_suspended(url, cacert, as_json) -> None:
    """Keys suspended after an anomaly alert, pending review."""
    data = Client(url, cacert).call("GET", "/admin/suspensions")["data"]

    def lines(rows):
        yield f"{'KEY':<22} {'REASON':<16} {'SINCE':<22} DETAIL"
        for row in rows:
            yield f"{row['key_id']:<22} {row['reason']:<16} {when(row['suspended_at']):<22} {row['detail']}"

    show(data, as_json, lines)


@keys.command("reinstate")
@click.argument("key_id")
@connection_options
def keys_reinstate(key_id, url, cacert, as_json) -> None:
    """Lift the suspension of a key (audited)."""
    data = Client(url, cacert).call("POST", f"/admin/keys/{quote(key_id, safe='')}/reinstate")
    show(data, as_json, lambda d: [f"reinstated {d['key_id']}"])
