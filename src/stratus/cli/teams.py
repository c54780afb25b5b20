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
    Column,
    checked_rule,
    describe,
    gateway_options,
    given,
    limit_flags,
    limits_command,
    render,
    show,
)

TEAM_COLUMNS = [
    Column("name"),
    Column("members", fmt=lambda ms: ", ".join(f"{m['user']} ({m['role']})" for m in ms) or "-"),
    Column("models"),
]
TEAM_FIELDS = [*TEAM_COLUMNS, Column("limits", fmt=lambda r: describe(r) if r else "-")]
READ = "an auditor's or an admin's key, or a team admin's for their team (directory.read)."
MANAGE = "an admin's key, or a team admin's for their team (teams.manage)."
GRANT = "an admin's key (grants.manage); no one can grant a model they may not use."


@click.group()
def teams() -> None:
    """Create teams, manage their members and model grants on a running server."""


@teams.command("create")
@click.argument("name")
@limit_flags
@gateway_options(credential="an admin's key (teams.manage everywhere).")
def teams_create(name, url, cacert, output, **limits) -> None:
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
    render(team, output, TEAM_FIELDS)


@teams.command("list")
@gateway_options(credential=READ)
def teams_list(url, cacert, output) -> None:
    """List the teams you may see."""
    data = Client(url, cacert).call("GET", "/admin/teams")["data"]
    render(data, output, TEAM_COLUMNS, empty="no teams")


@teams.command("get")
@click.argument("name")
@gateway_options(credential=READ)
def teams_get(name, url, cacert, output) -> None:
    """Show one team."""
    render(Client(url, cacert).call("GET", f"/admin/teams/{quote(name, safe='')}"), output, TEAM_FIELDS)


@teams.command("add-member")
@click.argument("team")
@click.argument("user")
@click.option("--role", type=click.Choice(["team_admin", "member"]), default="member", show_default=True)
@gateway_options(credential=MANAGE)
def teams_add_member(team, user, role, url, cacert, output) -> None:
    """Add a user to a team, or change their role in it."""
    path = f"/admin/teams/{quote(team, safe='')}/members/{quote(user, safe='')}"
    render(Client(url, cacert).call("PUT", path, {"role": role}), output, TEAM_FIELDS)


@teams.command("remove-member")
@click.argument("team")
@click.argument("user")
@gateway_options(credential=MANAGE)
def teams_remove_member(team, user, url, cacert, output) -> None:
    """Remove a user from a team."""
    path = f"/admin/teams/{quote(team, safe='')}/members/{quote(user, safe='')}"
    render(Client(url, cacert).call("DELETE", path), output, TEAM_FIELDS)


@teams.command("grant")
@click.argument("team")
@click.argument("model")
@gateway_options(credential=GRANT)
def teams_grant(team, model, url, cacert, output) -> None:
    """Let a team's members call a model ('*': every model)."""
    path = f"/admin/teams/{quote(team, safe='')}/models/{quote(model, safe='/')}"
    render(Client(url, cacert).call("PUT", path), output, TEAM_FIELDS)


@teams.command("ungrant")
@click.argument("team")
@click.argument("model")
@gateway_options(credential=GRANT)
def teams_ungrant(team, model, url, cacert, output) -> None:
    """Withdraw a model from a team."""
    path = f"/admin/teams/{quote(team, safe='')}/models/{quote(model, safe='/')}"
    render(Client(url, cacert).call("DELETE", path), output, TEAM_FIELDS)


@teams.command("limits")
@click.argument("team")
@click.option("--model", default=None, help="Only requests for this model. [default: every model]")
@limit_flags
@click.option("--clear", is_flag=True, help="Remove the team's limits (on --model).")
@gateway_options(credential="an admin's key, or a team admin's for their team (limits.manage).")
def teams_limits(team, model, clear, url, cacert, output, **limits) -> None:
    """Show a team's limits, set them (replacing those on the same --model), or --clear them."""
    limits_command("team", team, model, clear, limits, Client(url, cacert), output)


@teams.command("content-logging")
@click.argument("team")
@click.option(
    "--on/--off", "enabled", required=True, help="Log (redacted, encrypted) prompts and completions."
)
@gateway_options(credential="an admin's key (security.manage).")
def teams_content_logging(team, enabled, url, cacert, output) -> None:
    """Turn content logging on or off for TEAM (admins; audited)."""
    path = f"/admin/teams/{quote(team, safe='')}/content-logging"
    data = Client(url, cacert).call("PUT", path, {"enabled": enabled})
    show(
        data,
        output,
        lambda d: [f"content logging for {d['team']}: {'on' if d['content_logging'] else 'off'}"],
    )
