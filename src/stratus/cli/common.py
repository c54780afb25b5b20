"""What the `stratus` commands share: the HTTP client of the commands that call a running server's
/admin API, their options and output, the limit flags, the options and opening of the database
for the commands that use it directly, the engine flags, and binding a listening socket.

    @keys.command("get")
    @click.argument("key_id")
    @connection_options                              # --url, --cacert, --json
    def keys_get(key_id, url, cacert, as_json):
        show(Client(url, cacert).call("GET", f"/admin/keys/{key_id}"), as_json, key_lines)

The API key is read from STRATUS_API_KEY only (a flag would show it in `ps`); the server from
--url or STRATUS_URL. Nothing here imports more than click and httpx at module level, so
`stratus --help` stays quick.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import typing
from datetime import UTC, datetime
from typing import Any

import click
import httpx

from stratus.limits.rules import LIMIT_FIELDS, LimitInvalid, validate_rule

# -- a running server's /admin API ----------------------------------------------------------------

DEFAULT_URL = "http://127.0.0.1:8000"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90' or '90s', '15m', '12h', '30d', '2w' -> seconds."""
    m = _DURATION.match(text or "")
    if not m:
        raise click.BadParameter(f"{text!r}: use a number with s, m, h, d or w (e.g. 30d)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def api_key() -> str:
    """STRATUS_API_KEY, or a ClickException asking for it."""
    key = os.environ.get("STRATUS_API_KEY", "").strip()
    if not key:
        raise click.ClickException("set STRATUS_API_KEY to an API key of the server")
    return key


class Client:
    """The /admin API of the server at `url`, with STRATUS_API_KEY; errors become ClickExceptions."""

    def __init__(self, url: str, cacert: str | None):
        key = api_key()
        verify: Any = cacert if cacert else True
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
            verify=verify,
        )

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.http.base_url}: {exc}") from None
        if r.status_code >= 400:
            hint = " (check STRATUS_API_KEY)" if r.status_code == 401 else ""
            raise click.ClickException(f"{r.status_code}: {error_message(r)}{hint}")
        return r.json()


def request(url: str, cacert: str | None, method: str, path: str, **kwargs) -> httpx.Response:
    """One call to the server at `url` with STRATUS_API_KEY (`stratus usage|limits`); the response
    as it came, for a caller that wants its text (CSV) rather than JSON."""
    key = api_key()
    try:
        r = httpx.request(
            method,
            url.rstrip("/") + path,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
            verify=cacert or True,
            **kwargs,
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    if r.status_code >= 400:
        raise click.ClickException(f"{r.status_code}: {error_message(r)}")
    return r


def error_message(r: httpx.Response) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    try:
        return r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


def connection_options(func):
    """--url, --cacert and --json, for the commands that call the /admin API through `Client`."""
    func = click.option(
        "--cacert",
        envvar="STRATUS_CA_CERT",
        default=None,
        help="CA certificate (PEM) to trust for an HTTPS server. [env: STRATUS_CA_CERT]",
    )(func)
    func = click.option(
        "--url",
        envvar="STRATUS_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The server. [env: STRATUS_URL]",
    )(func)
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


# --url and --cacert as `stratus usage|limits` spell them (no --json: they choose their own format)
url_option = click.option(
    "--url", envvar="STRATUS_URL", default=DEFAULT_URL, help="The server. [env: STRATUS_URL]"
)
cacert_option = click.option(
    "--cacert", envvar="STRATUS_CA_CERT", default=None, help="CA certificate for HTTPS."
)


# -- output ---------------------------------------------------------------------------------------


def when(ts: float | None) -> str:
    """A Unix time as '2026-11-28 10:00:00Z'; '-' for None."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` with control characters shown as escapes: names, models and user agents are
    chosen by clients, and an escape sequence in them must not reach an operator's terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def show(data: Any, as_json: bool, lines) -> None:
    """`data` as indented JSON with --json (control characters escaped by JSON), else each line
    `lines(data)` yields, made terminal-safe."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines(data):
            click.echo(terminal_safe(line))


# -- limit flags: `stratus limits set`, `stratus keys create|limits`, `stratus teams create|limits` --
#
# What they turn into is a limit rule for PUT /admin/limits. Checking on this side too lets a
# command that creates something (a key, a team) refuse bad limits before it creates anything;
# the server checks again (limits/rules.validate_rule).

# field, flag names (the first is the one messages use), type, help
LIMIT_FLAGS: list[tuple[str, tuple[str, ...], type, str]] = [
    ("rpm", ("--rpm",), int, "Requests per minute."),
    ("tpm", ("--tpm",), int, "Tokens (prompt + completion) per minute."),
    ("concurrent", ("--concurrent", "--concurrency"), int, "Sequences in flight at once (prompts × n)."),
    ("tokens_per_day", ("--tokens-per-day", "--daily-tokens"), int, "Tokens per UTC day."),
    ("tokens_per_month", ("--tokens-per-month", "--monthly-tokens"), int, "Tokens per UTC month."),
    (
        "budget_usd_per_month",
        ("--budget-usd",),
        float,
        "Spend per UTC month in USD (serve's --model-prices).",
    ),
]
FLAG_OF = {name: flags[0] for name, flags, _, _ in LIMIT_FLAGS}


def limit_flags(func):
    """Adds every limit flag; the command receives them by field name (None when not given)."""
    for name, flags, kind, text in reversed(LIMIT_FLAGS):
        func = click.option(*flags, name, type=kind, default=None, help=text)(func)
    return func


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The limit flags that were given, by field name."""
    return {name: values[name] for name in LIMIT_FIELDS if values.get(name) is not None}


def checked_rule(scope: str, subject: str, model: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """The body of PUT /admin/limits; click.BadParameter (naming the flag) if a value is refused."""
    body = {"scope": scope, "subject": subject, "model": model, **given(values)}
    try:
        validate_rule(body)
    except LimitInvalid as exc:
        hint = FLAG_OF.get(exc.field or "", "--model" if exc.field == "model" else None)
        raise click.BadParameter(str(exc), param_hint=hint) from None
    return body


def describe(rule: dict[str, Any]) -> str:
    """'team ml on model tiny: rpm=60, budget_usd_per_month=50.0'"""
    where = f"{rule['scope']} {rule['subject']} on " + (
        f"model {rule['model']}" if rule.get("model") else "every model"
    )
    limits = ", ".join(f"{name}={rule[name]}" for name in LIMIT_FIELDS if rule.get(name) is not None)
    return f"{where}: {limits or '(none)'}"


def limits_command(scope, subject, model, clear, limits, client: Client, as_json: bool) -> None:
    """`stratus keys limits` and `stratus teams limits`: show a subject's limits, set them
    (replacing those on the same model), or clear them."""
    if clear and given(limits):
        raise click.UsageError("give either --clear or limit values, not both")
    if clear:
        params = {"scope": scope, "subject": subject, **({"model": model} if model else {})}
        client.call("DELETE", "/admin/limits", params=params)
        click.echo(f"cleared: {scope} {subject} on " + (f"model {model}" if model else "every model"))
    elif given(limits):
        rule = client.call("PUT", "/admin/limits", checked_rule(scope, subject, model, limits))
        show(rule, as_json, lambda r: [describe(r)])
    else:
        rules = client.call("GET", "/admin/limits")["data"]
        mine = [r for r in rules if r["scope"] == scope and r["subject"] == subject]
        mine = [r for r in mine if model is None or r.get("model") == model]
        show(mine, as_json, lambda rows: [describe(r) for r in rows] or [f"no limits for {scope} {subject}"])


# -- the database, for the commands that work on it directly (audit, secrets, upstreams) ----------


def store_options(func):
    """--data-dir and --database-url, as `stratus serve` reads them."""
    func = click.option(
        "--database-url",
        envvar="STRATUS_DATABASE_URL",
        default=None,
        help="PostgreSQL URL; default: SQLite in the data directory. [env: STRATUS_DATABASE_URL]",
    )(func)
    return click.option(
        "--data-dir",
        envvar="STRATUS_DATA_DIR",
        default="data",
        show_default=True,
        help="[env: STRATUS_DATA_DIR]",
    )(func)


def open_store(data_dir: str, database_url: str | None):
    """The Store, or a ClickException that says why it cannot be opened."""
    from stratus.store import Store, StoreUnavailable
    from stratus.store import database_url as url_of

    try:
        return Store.open(url_of(data_dir, database_url))
    except StoreUnavailable as exc:
        raise click.ClickException(f"cannot open the database: {exc}") from None


# -- engines: `stratus serve` and `stratus worker` ------------------------------------------------

ENGINE_HELP = {
    "dtype": "Weights and activations: auto (float32 on CPU), float32, bfloat16 or float16.",
    "device": "auto (cuda when available, else cpu), cpu or cuda[:N].",
    "block_size": "Tokens per KV cache block.",
    "kv_cache_memory_mb": "Memory for the KV block pool, in MiB.",
    "num_kv_blocks": "Exact number of KV blocks in the pool; overrides --kv-cache-memory-mb.",
    "max_num_seqs": "Most sequences in one batch.",
    "max_num_batched_tokens": "Token budget of one step (prefill chunks plus decodes).",
    "max_model_len": "Context window; default: the model's.",
    "enable_prefix_caching": "Reuse KV blocks of shared prompt prefixes.",
    "num_threads": "PyTorch threads on CPU; default: PyTorch's choice.",
    "native_kernels": "On CPU in float32, run decode attention in stratus's C kernel (built on first use with the system C compiler).",
    "seed": "Seed for requests that do not set one.",
    "max_tokens_per_second": "Cap the engine's output tokens per second, over all sequences (a replica of that capacity); default: no cap.",
    "max_loras": "LoRA adapters held in memory at once (an LRU; also the most distinct adapters in one batch).",
}


def engine_options(func):
    """One flag per EngineConfig field, so every engine knob is a `stratus serve|worker` flag
    (None when not given: the setting then comes from STRATUS_* or stratus.toml)."""
    from stratus.engine.config import EngineConfig

    hints = typing.get_type_hints(EngineConfig)
    defaults = EngineConfig()
    for f in reversed(dataclasses.fields(EngineConfig)):
        typ = hints[f.name]
        args = typing.get_args(typ)
        base = next((a for a in args if a is not type(None)), typ) if args else typ
        flag = f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = f"{ENGINE_HELP.get(f.name, f'Engine setting {f.name}.')} [default: {default}]"
        if base is bool:
            decl = f"--{flag}/--no-{flag}"
            func = click.option(decl, f.name, default=None, help=text)(func)
        else:
            func = click.option(f"--{flag}", f.name, type=base, default=None, help=text)(func)
    return func


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (inheritable, for uvicorn), or a ClickException."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
