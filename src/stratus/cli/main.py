"""The `stratus` command. `stratus serve` runs the OpenAI-compatible gateway in front of engines.

Settings come from flags, then `STRATUS_*` environment variables, then stratus.toml, then
defaults (see stratus/config.py). Other commands (worker, keys, users, ...) join this group.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import typing
from pathlib import Path
from typing import Any

import click

import stratus
from stratus.config import ConfigError, Settings, load_settings, parse_model_spec
from stratus.net.urls import is_loopback

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
    "split_steps": "On CPU with 2+ threads, compute a step's batch as two halves on two threads (helps on a machine whose cores are busy with other work).",
    "native_kernels": "On CPU in float32, run decode attention in stratus's C kernel (built on first use with the system C compiler).",
    "seed": "Seed for requests that do not set one.",
    "max_tokens_per_second": "Cap the engine's output tokens per second, over all sequences (a replica of that capacity); default: no cap.",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(stratus.__version__, prog_name="stratus")
def main() -> None:
    """stratus: serve open-weight LLMs behind an OpenAI-compatible API."""


def _engine_options(func):
    """One flag per EngineConfig field, so every engine knob is a `stratus serve` flag."""
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


def _default(name: str) -> Any:
    return getattr(Settings(), name)


@main.command()
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PATH",
    help="A Hugging Face checkpoint directory to serve as NAME; repeat for several models. "
    "Default: the bundled demo model as 'demo'. [env: STRATUS_MODELS=a=/p,b=/q]",
)
@click.option("--host", default=None, help=f"Address to listen on. [default: {_default('host')}]")
@click.option("--port", type=int, default=None, help=f"Port (0: any free one). [default: {_default('port')}]")
@click.option("--data-dir", default=None, help=f"Where state is kept. [default: {_default('data_dir')}]")
@click.option("--tls-cert", default=None, help="TLS certificate (PEM); HTTPS when given with --tls-key.")
@click.option("--tls-key", default=None, help="TLS private key (PEM).")
@click.option(
    "--tls-self-signed/--no-tls-self-signed",
    default=None,
    help="HTTPS with a development certificate made once under DATA_DIR/tls (clients pin cert.pem).",
)
@click.option(
    "--tls-client-ca", default=None, help="Demand client certificates signed by this CA (PEM): mutual TLS."
)
@click.option(
    "--allow-insecure-http/--no-allow-insecure-http",
    default=None,
    help="Serve plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).",
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
@__import__("stratus.cli.usage", fromlist=["limit_options"]).limit_options  # limits, metering
@__import__("stratus.cli.cluster", fromlist=["cluster_options"]).cluster_options  # workers
@__import__("stratus.cli.ray", fromlist=["ray_options"]).ray_options  # Ray replicas
@_engine_options
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
      stratus serve                                  # the demo model as 'demo' on 127.0.0.1:8000
      stratus serve --model llama=/models/llama-3.2-1b --port 9000
      STRATUS_PORT=9000 stratus serve                # every flag has a STRATUS_* variable

    SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish for up to
    --drain-timeout seconds, and exits 0.
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


def _check_models(settings: Settings) -> None:
    for name, path in settings.model_paths().items():
        if not (path / "config.json").is_file():
            hint = "Pass --model NAME=PATH with a Hugging Face checkpoint directory."
            if not settings.models:
                hint = "Train it with `make demo-model`, or " + hint[0].lower() + hint[1:]
            raise click.ClickException(
                f"model '{name}': no checkpoint at {path} (config.json missing). {hint}"
            )


def _bind(host: str, port: int) -> socket.socket:
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

    if not settings.auth and not is_loopback(settings.host):
        raise click.ClickException(
            f"refusing --no-auth on {settings.host}: without access control anyone who can reach the "
            "port can use every model; listen on 127.0.0.1, or drop --no-auth"
        )
    if not settings.tls and not is_loopback(settings.host) and not settings.allow_insecure_http:
        raise click.ClickException(
            f"refusing plain HTTP on {settings.host}: give --tls-cert and --tls-key, listen on "
            "127.0.0.1, or pass --allow-insecure-http when a TLS proxy sits in front"
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
    _check_models(settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    hooks = _access_hooks(settings)
    sock = _bind(settings.host, settings.port)
    config = uvicorn.Config(
        create_app(settings, hooks=hooks),
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout,
        lifespan="on",
        **uvicorn_options(settings.tls_cert, settings.tls_key, settings.tls_client_ca),
    )
    return uvicorn.Server(config), sock


def _access_hooks(settings: Settings):
    """Access control for `serve`: open the store, and on a fresh one create the first admin."""
    from stratus.api.auth import AuthHooks, build_access
    from stratus.api.pipeline import OPEN_ACCESS
    from stratus.security.bootstrap import ENV_VAR, bootstrap
    from stratus.security.errors import Unavailable
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
    return AuthHooks(access)


def run_server(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, drain, and return the exit status."""
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # it narrates each plugin and migration
    server, sock = build_server(settings)
    click.echo(banner(settings, settings.host, sock.getsockname()[1]), nl=True)
    sys.stdout.flush()
    # uvicorn re-raises the signal that stopped it once it has drained; the default handlers
    # would then kill the process (SIGTERM) or raise KeyboardInterrupt. A drained server is a
    # clean exit, so both become no-ops here.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    click.echo("stratus: stopped", err=True)
    return 0


main.add_command(__import__("stratus.cli.compress", fromlist=["compress"]).compress)  # stratus compress
__import__("stratus.cli.admin", fromlist=["register"]).register(main)  # stratus keys|users|teams
__import__("stratus.cli.usage", fromlist=["register"]).register(main)  # stratus usage|limits
main.add_command(__import__("stratus.cli.audit", fromlist=["audit"]).audit)  # stratus audit
main.add_command(__import__("stratus.cli.secrets", fromlist=["secrets"]).secrets)  # stratus secrets
__import__("stratus.cli.ray", fromlist=["register"]).register(main)  # stratus cluster scale
__import__("stratus.cli.cluster", fromlist=["register"]).register(main, _engine_options)  # worker, upstreams
__import__("stratus.cli.review", fromlist=["register"]).register(main)  # lockouts|alerts, keys reinstate

if __name__ == "__main__":
    main()
