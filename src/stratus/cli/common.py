"""What the `stratus` commands share: how a command reaches a running gateway (one convention for
every admin command), how it prints, the limit flags, the options and opening of the database for
the few forms that must run on the gateway host, the engine flags, and binding a listening socket.

    @keys.command("get")
    @click.argument("key_id")
    @gateway_options(credential="a key that may see KEY_ID (its owner, a team admin, an admin)")
    def keys_get(key_id, url, cacert, output):
        render(Client(url, cacert).call("GET", f"/admin/keys/{key_id}"), output, KEY_FIELDS)

The convention (docs/CLI.md):

- the gateway: --url or STRATUS_URL; --cacert or STRATUS_CA_CERT for an HTTPS gateway whose
  certificate a private CA signed;
- the credential: STRATUS_API_KEY only (a flag would show it in `ps`); each command's --help
  says which key it needs (`gateway_options(credential=...)` appends it; a command that calls no
  gateway says what it uses instead: `with_credential`);
- the output: a table by default, `--output json|jsonl|csv` for scripts (cli/output.py);
- one flag name per idea; an old name stays for one release as a hidden alias that warns
  (`deprecated_alias`).

Nothing here imports more than click and httpx at module level, so `stratus --help` stays quick.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import socket
import typing
from typing import Any

import click
import httpx

from stratus.cli.output import OUTPUTS, Column, render, terminal_safe, when
from stratus.limits.rules import LIMIT_FIELDS, LimitInvalid, validate_rule

__all__ = ["Column", "render", "terminal_safe", "when"]  # re-exported for the commands

# -- a running gateway's API ----------------------------------------------------------------------

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
    """The API of the gateway at `url`, with STRATUS_API_KEY; errors become ClickExceptions."""

    def __init__(self, url: str, cacert: str | None, timeout: float = 30):
        key = api_key()
        verify: Any = cacert if cacert else True
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            verify=verify,
        )

    def raw(
        self, method: str, path: str, body: dict | None = None, params: dict | None = None
    ) -> httpx.Response:
        """The response as it came (a caller that wants its text), or a ClickException."""
        try:
            r = self.http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.url}: {exc}") from None
        if r.status_code >= 400:
            hint = " (check STRATUS_API_KEY)" if r.status_code == 401 else ""
            raise click.ClickException(f"{r.status_code}: {error_message(r)}{hint}")
        return r

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> Any:
        """The JSON body of the response, or a ClickException."""
        return self.raw(method, path, body, params).json()


def request(url: str, cacert: str | None, method: str, path: str, **kwargs) -> httpx.Response:
    """One call to the server at `url` with STRATUS_API_KEY; the response as it came."""
    client = Client(url, cacert)
    return client.raw(method, path, kwargs.get("json"), kwargs.get("params"))


def error_message(r: httpx.Response) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    try:
        return r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


def deprecated_alias(old: str, new: str, value: Any = True, dest: str | None = None, type: Any = None):
    """A hidden flag `old` kept for one release: using it warns on stderr and sets the parameter
    `dest` (default: the new flag's) to `value` (None: the value given, of `type`) unless the new
    flag was given too (read it with `aliased`)."""

    def callback(ctx: click.Context, param: click.Parameter, given: Any) -> None:
        if not given:
            return
        click.echo(f"warning: {old} is deprecated and will be removed; use {new}", err=True)
        target = dest or new.split()[0].lstrip("-").replace("-", "_")
        ctx.meta.setdefault("stratus_aliases", {})[target] = value if value is not None else given

    def decorate(func: Any) -> Any:
        kind: dict[str, Any] = {"is_flag": True} if value is not None else {"default": None, "type": type}
        return click.option(old, expose_value=False, hidden=True, callback=callback, **kind)(func)

    return decorate


def warn_deprecated(new: str):
    """A click callback for a hidden option kept for one release: warn (naming `new`) when used."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and value is not False and value != ():
            name = max(param.opts, key=len) if param.opts else param.name
            click.echo(f"warning: {name} is deprecated and will be removed; use {new}", err=True)
        return value

    return callback


def aliased(ctx: click.Context, name: str, current: Any) -> Any:
    """The value of parameter `name`: a deprecated alias's when it was used and the new flag was
    not (still its default), else `current`."""
    aliases = ctx.meta.get("stratus_aliases", {})
    if name in aliases and ctx.get_parameter_source(name) != click.core.ParameterSource.COMMANDLINE:
        return aliases[name]
    return current


DEFAULT_CREDENTIAL = "STRATUS_API_KEY, a key of the gateway allowed to do this."


def with_credential(func, credential: str):
    """Append 'Credential: ...' to the command's help (its docstring)."""
    doc = inspect.cleandoc(func.__doc__ or "")
    func.__doc__ = f"{doc}\n\nCredential: {credential}"
    return func


def gateway_options(credential: str | None = None, output: bool = True):
    """--url, --cacert and (with `output`) --output for a command that calls a gateway through
    `Client`; its --help ends with the credential it uses ('STRATUS_API_KEY: ...' by default).

    The command receives url, cacert and output; `--json` is a deprecated alias of
    `--output json`."""
    text = credential or DEFAULT_CREDENTIAL
    if not text.startswith("STRATUS_API_KEY"):
        text = f"STRATUS_API_KEY, {text}"

    def decorate(func):
        if output:
            func = _output_from_alias(func)
        func = with_credential(func, text)
        func = click.option(
            "--cacert",
            envvar="STRATUS_CA_CERT",
            default=None,
            help="CA certificate (PEM) to trust for an HTTPS gateway. [env: STRATUS_CA_CERT]",
        )(func)
        func = click.option(
            "--url",
            envvar="STRATUS_URL",
            default=DEFAULT_URL,
            show_default=True,
            help="The gateway. [env: STRATUS_URL]",
        )(func)
        if output:
            func = output_option(func)
        return func

    return decorate


def _output_from_alias(func):
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        kwargs["output"] = aliased(ctx, "output", kwargs["output"])
        return func(*args, **kwargs)

    return wrapper


def output_option(func):
    """--output table|json|jsonl|csv (env STRATUS_OUTPUT), and the deprecated --json."""
    func = deprecated_alias("--json", "--output json", value="json", dest="output")(func)
    return click.option(
        "--output",
        "-o",
        type=click.Choice(OUTPUTS),
        envvar="STRATUS_OUTPUT",
        default="table",
        show_default=True,
        help="table for people; json, jsonl or csv for scripts. [env: STRATUS_OUTPUT]",
    )(func)


# Every command that used it keeps working: the same options as `gateway_options()`.
connection_options = gateway_options()


def show(data: Any, output: str | bool, lines) -> None:
    """`data` as `output` (json, jsonl, csv: cli/output.py), or as table: each line `lines(data)`
    yields, made terminal-safe (for a summary that is not a table, e.g. after a change)."""
    fmt = "json" if output is True else "table" if output is False else output
    if fmt != "table":
        render(data, fmt)
        return
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
    """Adds every limit flag; the command receives them by field name (None when not given). A
    flag's second name (--concurrency, --daily-tokens, --monthly-tokens) is a hidden deprecated
    alias: one name per idea."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        for name, _, _, _ in LIMIT_FLAGS:
            kwargs[name] = aliased(ctx, name, kwargs[name])
        return func(*args, **kwargs)

    for name, flags, kind, text in reversed(LIMIT_FLAGS):
        for old in flags[1:]:
            wrapper = deprecated_alias(old, flags[0], value=None, dest=name, type=kind)(wrapper)
        wrapper = click.option(flags[0], name, type=kind, default=None, help=text)(wrapper)
    return wrapper


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


RULE_COLUMNS = [
    Column("scope"),
    Column("subject"),
    Column("model", fmt=lambda m: m or "(every model)"),
    *(Column(name) for name in LIMIT_FIELDS),
]


def limits_command(scope, subject, model, clear, limits, client: Client, output: str) -> None:
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
        show(rule, output, lambda r: [describe(r)])
    else:
        rules = client.call("GET", "/admin/limits")["data"]
        mine = [r for r in rules if r["scope"] == scope and r["subject"] == subject]
        mine = [r for r in mine if model is None or r.get("model") == model]
        render(mine, output, RULE_COLUMNS, empty=f"no limits for {scope} {subject}")


# -- the database, for the forms that must run on the gateway host (`stratus audit verify`) -------

OFFLINE = (
    "none over the network: this runs on the gateway host and opens its database (--data-dir, "
    "--database-url) directly"
)


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


def legacy_store_options(func):
    """--data-dir and --database-url, hidden: the deprecated way of a command that now calls the
    gateway (`stratus secrets|upstreams`); given, the command works on the database directly as it
    used to, with a warning. Removed after one release."""
    func = click.option("--database-url", "database_url", default=None, hidden=True)(func)
    return click.option("--data-dir", "data_dir", default=None, hidden=True)(func)


def offline_warning(command: str) -> None:
    click.echo(
        f"warning: {command} --data-dir works on the database directly and is deprecated; "
        f"without it {command} calls the gateway (--url, STRATUS_API_KEY)",
        err=True,
    )


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
    "kv_cache_memory_mb": "Memory for the KV block pool, in MiB; default: sized by --kv-cache-memory-fraction.",
    "num_kv_blocks": "Exact number of KV blocks in the pool; overrides --kv-cache-memory-mb.",
    "kv_cache_memory_fraction": "Unless the pool is set by --kv-cache-memory-mb or --num-kv-blocks: the fraction of the "
    "memory available after the weights (MemAvailable on a CPU, free device memory on CUDA) it takes, capped at "
    "--max-num-seqs full-length sequences; default: 0.25 on a CPU, 0.8 on CUDA.",
    "max_num_seqs": "Most sequences in one batch.",
    "max_num_batched_tokens": "Token budget of one step (prefill chunks plus decodes).",
    "max_model_len": "Context window; default: the model's.",
    "enable_prefix_caching": "Reuse KV blocks of shared prompt prefixes.",
    "num_threads": "PyTorch threads on CPU; default: PyTorch's choice.",
    "native_kernels": "On CPU in float32, run decode attention in stratus's C kernel (built on first use with the system C compiler).",
    "seed": "Seed for requests that do not set one.",
    "gguf_dequantize": "Dequantize a GGUF file's Q8_0/Q4_0/Q4_1 weights to the serving dtype at load instead of serving them quantized (more memory; exact float math).",
    "max_tokens_per_second": "Cap the engine's output tokens per second, over all sequences (a replica of that capacity); default: no cap.",
    "max_loras": "LoRA adapters held in memory at once (an LRU; also the most distinct adapters in one batch).",
    "tensor_parallel_size": "Split each replica's layers over this many processes (heads, MLP and vocabulary sharded; one all-reduce per attention and per MLP). docs/PARALLEL.md",
    "pipeline_parallel_size": "Split each replica's layers into this many stages, one process each (TP x PP processes in all). docs/PARALLEL.md",
    "parallel_timeout_s": "Seconds a parallel rank may take in one collective before its replica is failed and restarted.",
    "max_weight_memory_mb": "Refuse to load a replica whose weights need more than this many MiB in one process (per rank when split); the message names a tensor-parallel size that fits.",
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
