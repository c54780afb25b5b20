"""`stratus upstreams add|list|remove`: OpenAI-compatible upstreams of a running gateway (its
/admin/upstreams, api/routes/upstreams.py).

    export STRATUS_API_KEY=sk-stratus-...                               # an admin's key
    printf %s "$VLLM_KEY" | stratus upstreams add vllm-a --model llama \\
        --base-url http://10.0.0.7:8000/v1 --upstream-model meta-llama/Llama-3.1-8B-Instruct
    stratus upstreams list
    stratus upstreams remove vllm-a

The upstream's API key is read from stdin (a flag would show in `ps`); the gateway stores it
AES-GCM encrypted under its master key, like every stored secret, and never returns it. Every
gateway sharing the database picks changes up within a couple of seconds.
"""

from __future__ import annotations

import sys
from urllib.parse import quote

import click

from stratus.cli.common import (
    Client,
    Column,
    gateway_options,
    legacy_store_options,
    offline_warning,
    open_store,
    render,
    when,
)

ADMIN = "an admin's key (cluster.manage)."
COLUMNS = [
    Column("name"),
    Column("model"),
    Column("base_url", "BASE URL"),
    Column("upstream_model", "UPSTREAM MODEL"),
    Column("created_at", "CREATED", when),
    Column("created_by", "BY"),
]


@click.group()
def upstreams() -> None:
    """OpenAI-compatible upstreams (vLLM, TGI, llama.cpp, Ollama, another stratus) serving a model."""


@upstreams.command("add")
@click.argument("name")
@click.option("--model", required=True, help="The model name clients use here.")
@click.option(
    "--base-url", required=True, help="The upstream's OpenAI base URL, e.g. http://10.0.0.7:8000/v1."
)
@click.option("--upstream-model", required=True, help="The model name the upstream expects.")
@click.option("--no-key", is_flag=True, help="The upstream needs no API key (else it is read from stdin).")
@gateway_options(credential=ADMIN, output=False)
@legacy_store_options
def add(
    name: str,
    model: str,
    base_url: str,
    upstream_model: str,
    no_key: bool,
    url: str,
    cacert: str | None,
    data_dir: str | None,
    database_url: str | None,
) -> None:
    """Register upstream NAME for MODEL; its API key is read from stdin."""
    from stratus.cluster.upstream import NAME_RE, check_base_url
    from stratus.config import MODEL_NAME_RE
    from stratus.security.secrets import SecretError, SecretStore, load_keyring
    from stratus.store import Conflict
    from stratus.store import upstreams as table

    if not NAME_RE.match(name):
        raise click.UsageError(f"NAME must match {NAME_RE.pattern}")
    if not MODEL_NAME_RE.match(model):
        raise click.UsageError(f"--model must match {MODEL_NAME_RE.pattern}")
    try:
        base_url = check_base_url(base_url)
    except ValueError as exc:
        raise click.UsageError(f"--base-url: {exc}") from None
    key = "" if no_key else sys.stdin.read().strip()
    if not no_key and not key:
        raise click.UsageError("pipe the upstream's API key on stdin, or pass --no-key")
    if data_dir is None:
        body = {"name": name, "model": model, "base_url": base_url, "upstream_model": upstream_model}
        Client(url, cacert).call("POST", "/admin/upstreams", {**body, **({"api_key": key} if key else {})})
        click.echo(
            f"upstreams: {name} serves model {model} from {base_url}"
            + (" (key stored encrypted)" if key else "")
        )
        return
    offline_warning("stratus upstreams add")
    store = open_store(data_dir, database_url)
    try:
        box = SecretStore(store, load_keyring(data_dir))
        with store.begin() as conn:
            table.add(conn, name, model, base_url, upstream_model, "cli")
        if key:
            box.put(table.secret_name(name), key)
    except Conflict as exc:
        raise click.ClickException(str(exc)) from None
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"upstreams: {name} serves model {model} from {base_url}" + (" (key stored encrypted)" if key else "")
    )


@upstreams.command("list")
@gateway_options(credential=ADMIN)
@legacy_store_options
def list_(url: str, cacert: str | None, output: str, data_dir: str | None, database_url: str | None) -> None:
    """The registered upstreams (keys are never shown)."""
    from stratus.store import upstreams as table

    if data_dir is None:
        rows = Client(url, cacert).call("GET", "/admin/upstreams")["data"]
    else:
        offline_warning("stratus upstreams list")
        with open_store(data_dir, database_url).connect() as conn:
            rows = table.list_all(conn)
    render(rows, output, COLUMNS, empty="no upstreams")


@upstreams.command("remove")
@click.argument("name")
@gateway_options(credential=ADMIN, output=False)
@legacy_store_options
def remove(name: str, url: str, cacert: str | None, data_dir: str | None, database_url: str | None) -> None:
    """Remove upstream NAME and its stored key."""
    from stratus.security.secrets import SecretStore, load_keyring
    from stratus.store import upstreams as table

    if data_dir is None:
        Client(url, cacert).call("DELETE", f"/admin/upstreams/{quote(name, safe='')}")
        click.echo(f"upstreams: removed {name}")
        return
    offline_warning("stratus upstreams remove")
    store = open_store(data_dir, database_url)
    with store.begin() as conn:
        found = table.remove(conn, name)
    if not found:
        raise click.ClickException(f"no upstream named {name!r}")
    SecretStore(store, load_keyring(data_dir)).delete(table.secret_name(name))
    click.echo(f"upstreams: removed {name}")
