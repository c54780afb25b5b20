"""`stratus lockouts`: sources locked out after repeated failed logins, on a running server.

export STRATUS_API_KEY=sk-stratus-...           # an admin's key (an auditor's for reading)
stratus lockouts list
stratus lockouts unlock addr:10.0.0.7
"""

from __future__ import annotations

from urllib.parse import quote

import click

from stratus.cli.common import Client, Column, gateway_options, render, show, when


@click.group()
def lockouts() -> None:
    """Sources locked out after repeated failed logins."""


@lockouts.command("list")
@gateway_options(credential="an auditor's or an admin's key (audit.read).")
def lockouts_list(url, cacert, output) -> None:
    """Lockouts in force on the server (each gateway process keeps its own)."""
    data = Client(url, cacert).call("GET", "/admin/lockouts")["data"]
    columns = [Column("source"), Column("until", fmt=when), Column("seconds_left")]
    render(data, output, columns, empty="no lockouts")


@lockouts.command("unlock")
@click.argument("source")
@gateway_options(credential="an admin's key (security.manage).")
def lockouts_unlock(source, url, cacert, output) -> None:
    """Lift the lockout of SOURCE (addr:ADDRESS or key:PREFIX@ADDRESS, as `list` shows it)."""
    data = Client(url, cacert).call("DELETE", f"/admin/lockouts/{quote(source, safe='')}")
    show(data, output, lambda d: [f"unlocked {d['source']}"])
