"""`stratus models list|status|add|remove`: the models of a running gateway (STRATUS_API_KEY).

    stratus models list                                  # any user: the models you may call
    stratus models add qwen Qwen/Qwen2.5-0.5B-Instruct   # admins (models.manage): load one now
    stratus models status                                # admins: downloading n%, loading, ready, failed
    stratus models remove qwen                           # running requests finish, then it unloads

`add` and `remove` act on the gateway's own engines through /admin/models (api/routes/
models_admin.py); what is added lasts until the gateway stops. `stratus worker`s and Ray
replicas keep the models they were started with.
"""

from __future__ import annotations

import time
from typing import Any

import click

from stratus.cli.common import Client, gateway_options, show
from stratus.cli.output import Column, render, when

MANAGE = "an admin's key (models.manage)."

LIST_COLUMNS = [
    Column("id", "MODEL"),
    Column("max_model_len", "CONTEXT"),
    Column("quantization", fmt=lambda q: q or "none"),
    Column("owned_by", "SERVED BY"),
    Column("ready"),
]
STATUS_COLUMNS = [
    Column("name", "MODEL"),
    Column("state", get=lambda m: _state(m)),
    Column("max_model_len", "CONTEXT"),
    Column("quantization", fmt=lambda q: q or "none"),
    Column("source"),
    Column("replicas", get=lambda m: [f"{r['id']} ({r['kind']})" for r in m["replicas"]]),
    Column("added_by", "ADDED BY"),
    Column("created", fmt=when),
]


@click.group()
def models() -> None:
    """The models of a running gateway: list them, or load and unload them (admins)."""


@models.command("list")
@gateway_options(credential="any user's key: the models that key may call.")
def list_(url: str, cacert: str | None, output: str) -> None:
    """The models you may call, with their context length and quantization."""
    data = Client(url, cacert).call("GET", "/v1/models")["data"]
    render(data, output, LIST_COLUMNS, empty="no models you may call")


@models.command("status")
@gateway_options(credential=MANAGE)
def status(url: str, cacert: str | None, output: str) -> None:
    """Every model of the gateway and its state: downloading n%, loading, ready, failed (why)."""
    data = Client(url, cacert).call("GET", "/admin/models")["data"]
    render(data, output, STATUS_COLUMNS, empty="no models")


@models.command("add")
@click.argument("name")
@click.argument("model")
@click.option("--task", type=click.Choice(["generate", "embed"]), default=None, help="What it is served for.")
@click.option("--wait/--no-wait", default=True, help="Follow it until it is ready or failed. [default: wait]")
@click.option("--timeout", type=float, default=1800.0, show_default=True, help="Seconds to wait.")
@gateway_options(credential=MANAGE)
def add(
    name: str,
    model: str,
    task: str | None,
    wait: bool,
    timeout: float,
    url: str,
    cacert: str | None,
    output: str,
) -> None:
    """Load MODEL (a path on the gateway's machine, or a Hugging Face name) and serve it as NAME.

    \b
    Example:
      stratus models add smol HuggingFaceTB/SmolLM2-135M-Instruct
    """
    client = Client(url, cacert)
    body: dict[str, Any] = {"name": name, "model": model}
    if task:
        body["task"] = task
    data = client.call("POST", "/admin/models", body)
    deadline = time.monotonic() + timeout
    shown = None
    while wait and data["state"] in ("downloading", "loading"):
        line = _state(data)
        if line != shown and output == "table":
            click.echo(f"{name}: {line}")
            shown = line
        if time.monotonic() > deadline:
            raise click.ClickException(f"{name} is still {data['state']} after {timeout:.0f} s")
        time.sleep(1.0)
        data = next((m for m in client.call("GET", "/admin/models")["data"] if m["name"] == name), None)
        if data is None:
            raise click.ClickException(f"{name} was removed while it loaded")
    show(data, output, lambda m: [f"{name}: {_state(m)}"])
    if data["state"] == "failed":
        raise SystemExit(1)


@models.command("remove")
@click.argument("name")
@gateway_options(credential=MANAGE)
def remove(name: str, url: str, cacert: str | None, output: str) -> None:
    """Stop serving NAME: new requests get 404, running ones finish, then it unloads."""
    client = Client(url, cacert, timeout=600)  # waits for its running requests (--drain-timeout)
    data = client.call("DELETE", f"/admin/models/{name}")
    show(data, output, lambda d: [f"{name}: removed ({d['running']} requests were running)"])


def _state(m: dict[str, Any]) -> str:
    state = m["state"]
    if state == "downloading" and m.get("progress") is not None:
        state += f" {m['progress']:.0f}%"
    if state == "ready":
        state += f", context {m['max_model_len']} tokens"
    if m.get("error"):
        state += f": {m['error']}"
    return state
