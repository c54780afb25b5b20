"""`stratus teams`: teams, their members, model grants, limits and content logging on a running
server (its /admin API).

    export STRATUS_API_KEY=sk-stratus-...          # a key allowed to do what you ask
    stratus teams create ml
    stratus teams grant ml demo
    stratus teams limits ml --tokens-per-day 2000000                          # or --clear
    stratus teams content-logging ml --on           # prompts and completions, redacted, encrypted
"""

from __future__ import annotations

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
    show,
)


def _team_lines(t: dict) -> list[str]:
    members = ", ".join(f"{m['user']} ({m['role']})" for m in t["members"]) or "-"
    lines = [f"{t['name']}", f"  members: {members}", f"  models: {', '.join(t['models']) or '-'}"]
    return lines + ([f"  limits: {describe(t['limits'])}"] if t.get("limits") else [])


@click.group()
def teams() -> None:
    """Create teams, manage their members and model grants on a running server."""


@teams.command("create")
@click.argument("name")
@limit_flags
@connection_options
def teams_create(name, url, cacert, as_json, **limits) -> None:
    """Create a team; limit flags (--rpm, --tpm, ...) set its limits on every model."""
    # refuse bad limits before creating the team
    rule = checked_rule("team", name, None, limits) if given(limits) else None
    client = Client(url, cacert)
    team = client.call("POST", "/admin/teams", {"name": name})
    if rule is not None:
        try:
            team["limits"] = client.call("PUT", "/admin/limits", rule)
        except click.ClickException as exc:
            raise click.ClickException(
                f"team {name} was created, but its limits were not set: {exc.message}"
            ) from None
    show(team, as_json, _team_lines)


@teams.command("list")
@connection_options
def teams_list(url, cacert, as_json) -> None:
    """List the teams you may see."""
    data = Client(url, cacert).call("GET", "/admin/teams")["data"]
    show(data, as_json, lambda rows: [line for t in rows for line in _team_lines(t)])


@teams.command("get")
@click.argument("name")
@connection_options
def teams_get(name, url, cacert, as_json) -> None:
    """Show one team."""
    show(Client(url, cacert).call("GET", f"/admin/teams/{quote(name, safe='')}"), as_json, _team_lines)


@teams.command("add-member")
@click.argument("team")
@click.argument("user")
@click.option("--role", type=click.Choice(["team_admin", "member"]), default="member", show_default=True)
@connection_options
def teams_add_member(team, user, role, url, cacert, as_json) -> None:
    """Add a user to a team, or change their role in it."""
    path = f"/admin/teams/{quote(team, safe='')}/members/{quote(user, safe='')}"
    show(Client(url, cacert).call("PUT", path, {"role": role}), as_json, _team_lines)


@teams.command("remove-member")
@click.argument("team")
@click.argument("user")
@connection_options
def teams_remove_member(team, user, url, cacert, as_json) -> None:
    """Remove a user from a team."""
    path = f"/admin/teams/{quote(team, safe='')}/members/{quote(user, safe='')}"
    show(Client(url, cacert).call("DELETE", path), as_json, _team_lines)


@teams.command("grant")
@click.argument("team")
@click.argument("model")
@connection_options
def teams_grant(team, model, url, cacert, as_json) -> None:
    """Let a team's members call a model ('*': every model)."""
    path = f"/admin/teams/{quote(team, safe='')}/models/{quote(model, safe='/')}"
    show(Client(url, cacert).call("PUT", path), as_json, _team_lines)


@teams.command("ungrant")
@click.argument("team")
@click.argument("model")
@connection_options
def teams_ungrant(team, model, url, cacert, as_json) -> None:
    """Withdraw a model from a team."""
    path = f"/admin/teams/{quote(team, safe='')}/models/{quote(model, safe='/')}"
    show(Client(url, cacert).call("DELETE", path), as_json, _team_lines)


@teams.command("limits")
@click.argument("team")
@click.option("--model", default=None, help="Only requests for this model. [default: every model]")
@limit_flags
@click.option("--clear", is_flag=True, help="Remove the team's limits (on --model).")
@connection_options
def teams_limits(team, model, clear, url, cacert, as_json, **limits) -> None:
    """Show a team's limits, set them (replacing those on the same --model), or --clear them."""
    limits_command("team", team, model, clear, limits, Client(url, cacert), as_json)


@teams.command("content-logging")
@click.argument("team")
@click.option(
    "--on/--off", "enabled", required=True, help="Log (redacted, encrypted) prompts and completions."
)
@connection_options
def teams_content_logging(team, enabled, url, cacert, as_json) -> None:
    """Turn content logging on or off for TEAM (admins; audited)."""
    path = f"/admin/teams/{quote(team, safe='')}/content-logging"
    data = Client(url, cacert).call("PUT", path, {"enabled": enabled})
    show(
        data,
        as_json,
        lambda d: [f"content logging for {d['team']}: {'on' if d['content_logging'] else 'off'}"],
    )
