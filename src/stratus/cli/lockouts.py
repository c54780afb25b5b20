"""`stratus lockouts`: sources locked out after repeated failed logins, on a running server.

export STRATUS_API_KEY=sk-stratus-...           # an admin's key (an auditor's for reading)
stratus lockouts list
stratus lockouts unlock addr:10.0.0.7
"""

from __future__ import annotations

from urllib.parse import quote

import click

from stratus.cli.common import Client, connection_options, show, when


@click.group()
def lockouts() -> None:
    """Sources locked out after repeated failed logins."""


@lockouts.command("list")
@connection_options
def lockouts_list(url, cacert, as_json) -> None:
    """Lockouts in force on the server (each gateway process keeps its own)."""
    data = Client(url, cacert).call("GET", "/admin/lockouts")["data"]

    def lines(rows):
        yield f"{'SOURCE':<40} {'UNTIL':<22} SECONDS LEFT"
        for row in rows:
            yield f"{row['source']:<40} {when(row['until']):<22} {row['seconds_left']}"

    show(data, as_json, lines)


@lockouts.command("unlock")
@click.argument("source")
@connection_options
def lockouts_unlock(source, url, cacert, as_json) -> None:
    """Lift the lockout of SOURCE (addr:ADDRESS or key:PREFIX@ADDRESS, as `list` shows it)."""
    data = Client(url, cacert).call("DELETE", f"/admin/lockouts/{quote(source, safe='')}")
    show(data, as_json, lambda d: [f"unlocked {d['source']}"])
