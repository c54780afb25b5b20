"""`stratus upstreams add|list|remove`: OpenAI-compatible upstreams, written straight to the store.

    printf %s "$VLLM_KEY" | stratus upstreams add vllm-a --model llama \\
        --base-url http://10.0.0.7:8000/v1 --upstream-model meta-llama/Llama-3.1-8B-Instruct
    stratus upstreams list
    stratus upstreams remove vllm-a

The API key is read from stdin (a flag would show in `ps`) and stored AES-GCM encrypted under the
master key (STRATUS_MASTER_KEY, else DATA_DIR/master.key), like every stored secret; it is never
printed. Running gateways pick changes up within a couple of seconds. The same operations are
`/admin/upstreams` over HTTP.
"""

from __future__ import annotations

import sys

import click

from stratus.cli.common import open_store, store_options


@click.group()
def upstreams() -> None:
    """OpenAI-compatible upstreams (vLLM, TGI, llama.cpp, Ollama, another stratus) serving a model."""


@upstreams.command("add")
@store_options
@click.argument("name")
@click.option("--model", required=True, help="The model name clients use here.")
@click.option(
    "--base-url", required=True, help="The upstream's OpenAI base URL, e.g. http://10.0.0.7:8000/v1."
)
@click.option("--upstream-model", required=True, help="The model name the upstream expects.")
@click.option("--no-key", is_flag=True, help="The upstream needs no API key (else it is read from stdin).")
def add(
    name: str,
    model: str,
    base_url: str,
    upstream_model: str,
    no_key: bool,
    data_dir: str,
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
@store_options
def list_(data_dir: str, database_url: str | None) -> None:
    """The registered upstreams (keys are never shown)."""
    from stratus.store import upstreams as table

    with open_store(data_dir, database_url).connect() as conn:
        rows = table.list_all(conn)
    for r in rows:
        click.echo(f"{r['name']}\tmodel={r['model']}\t{r['base_url']}\tupstream_model={r['upstream_model']}")


@upstreams.command("remove")
@store_options
@click.argument("name")
def remove(name: str, data_dir: str, database_url: str | None) -> None:
    """Remove upstream NAME and its stored key."""
    from stratus.security.secrets import SecretStore, load_keyring
    from stratus.store import upstreams as table

    store = open_store(data_dir, database_url)
    with store.begin() as conn:
        found = table.remove(conn, name)
    if not found:
        raise click.ClickException(f"no upstream named {name!r}")
    SecretStore(store, load_keyring(data_dir)).delete(table.secret_name(name))
    click.echo(f"upstreams: removed {name}")
