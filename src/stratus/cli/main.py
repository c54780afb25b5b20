"""The `stratus` command: the group, and each top-level command from the module named after it.

Helpers the commands share (how a command reaches a gateway, its credential and output, the store,
the engine flags) are public in cli/common.py; the output formats are cli/output.py.
"""

from __future__ import annotations

import click

import stratus
from stratus.cli.alerts import alerts
from stratus.cli.audit import audit
from stratus.cli.chat import chat
from stratus.cli.cluster import cluster
from stratus.cli.compress import compress
from stratus.cli.keys import keys
from stratus.cli.limits import limits
from stratus.cli.lockouts import lockouts
from stratus.cli.models import models
from stratus.cli.secrets import secrets
from stratus.cli.serve import serve
from stratus.cli.status import status
from stratus.cli.teams import teams
from stratus.cli.train import train
from stratus.cli.upstreams import upstreams
from stratus.cli.usage import usage
from stratus.cli.users import users
from stratus.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(stratus.__version__, prog_name="stratus")
def main() -> None:
    """stratus: serve open-weight LLMs behind an OpenAI-compatible API."""


for command in (
    serve,
    worker,
    status,
    chat,
    keys,
    users,
    teams,
    limits,
    usage,
    audit,
    secrets,
    upstreams,
    cluster,
    models,
    lockouts,
    alerts,
    compress,
    train,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
