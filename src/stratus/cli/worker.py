"""`stratus worker`: one engine behind an authenticated internal HTTP API, joining a gateway.

    export STRATUS_CLUSTER_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    stratus serve --no-local-models ...              # the gateway, with the same secret
    stratus worker --model demo=models/demo --port 8101 --gateway http://127.0.0.1:8000

The flags the worker shares with `stratus serve` (host, port, TLS, cluster secret, engine
isolation, drain timeout, log level and every engine setting) are settings like serve's: flag >
`STRATUS_*` environment variable > stratus.toml (or --config, or STRATUS_CONFIG) > default, the
default port being 8100 here. The other flags (--model, --gateway, --worker-id, ...) are flags only.
"""

from __future__ import annotations

import os
import signal
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from stratus.cli.common import bind_socket, engine_options
from stratus.config import (
    DEFAULT_CONFIG_FILE,
    ENGINE_NAMES,
    ENV_PREFIX,
    ConfigError,
    Settings,
    load_settings,
    parse_model_spec,
)
from stratus.engine.gguf import is_gguf

# worker flags that are settings of `stratus serve` too (config.Settings), so STRATUS_* variables
# and stratus.toml set them as well; with the engine settings (config.ENGINE_NAMES)
SHARED_SETTINGS = (
    "host",
    "port",
    "cluster_secret_file",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "engine_isolation",
    "drain_timeout",
    "log_level",
    "log_format",
    "otlp_endpoint",
)
# where the worker's default is not serve's (serve listens on 8000): it holds unless a flag, a
# STRATUS_* variable or the settings file sets it
WORKER_DEFAULTS: dict[str, Any] = {"port": 8100}

_WORKER_OPTIONS = [
    click.option(
        "--model",
        "model_spec",
        required=True,
        metavar="NAME=PATH",
        help="The checkpoint to serve: a directory, a GGUF file, or a Hugging Face name org/repo[@rev].",
    ),
    click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on."),
    click.option("--port", type=int, default=8100, show_default=True, help="Port (0: any free one)."),
    click.option(
        "--gateway",
        "gateways",
        multiple=True,
        help="Register with this gateway (its base URL) and send it heartbeats; repeat for several.",
    ),
    click.option(
        "--cluster-secret-file",
        default=None,
        help="File holding the cluster secret. [env: STRATUS_CLUSTER_SECRET holds the secret itself]",
    ),
    click.option("--worker-id", default=None, help="Stable id of this worker. [default: MODEL@HOST:PORT]"),
    click.option("--advertise-url", default=None, help="URL the gateway reaches this worker at."),
    click.option("--tls-cert", default=None, help="HTTPS certificate (PEM)."),
    click.option("--tls-key", default=None, help="Its private key (PEM)."),
    click.option(
        "--tls-client-ca", default=None, help="Demand gateway client certificates from this CA (mTLS)."
    ),
    click.option("--gateway-ca", default=None, help="CA (PEM) that signs the gateway's certificate."),
    click.option(
        "--insecure-http",
        is_flag=True,
        help="Allow plain HTTP on a non-loopback address, and to a non-loopback --gateway (the "
        "cluster secret then crosses the network in clear).",
    ),
    click.option(
        "--engine-isolation", type=click.Choice(["process", "thread"]), default="process", show_default=True
    ),
    click.option(
        "--heartbeat-interval", type=float, default=2.0, show_default=True, help="Seconds between beats."
    ),
    click.option(
        "--keepalive-interval",
        type=click.FloatRange(min=0.05),
        default=5.0,
        show_default=True,
        help="Seconds of silence in a stream (a queued request) before a keepalive line; keep it "
        "well under the gateway's --worker-read-timeout.",
    ),
    click.option(
        "--drain-timeout", type=float, default=30.0, show_default=True, help="Seconds to drain on SIGTERM."
    ),
    click.option(
        "--log-level",
        type=click.Choice(["critical", "error", "warning", "info", "debug"]),
        default="info",
        show_default=True,
    ),
    click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Application logs as text lines or JSON lines (docs/OBSERVABILITY.md).",
    ),
    click.option(
        "--otlp-endpoint",
        default=None,
        help="Send OpenTelemetry traces over OTLP/HTTP to this collector URL; a gateway's "
        "`traceparent` is continued. Needs `pip install 'stratus[otel]'`. [default: off]",
    ),
]

_CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Settings file, as `stratus serve` reads it. [default: ./stratus.toml if present; env: "
    "STRATUS_CONFIG]",
)


def worker_settings(
    cli: Mapping[str, Any],
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """The settings of a worker, resolved like `stratus serve`'s: `cli` (the flags given on the
    command line, by setting name) > `STRATUS_*` variables of `env` (default: os.environ) >
    stratus.toml (or `config_file`, or STRATUS_CONFIG) > the worker's defaults. A bad value is a
    click.UsageError that names where it came from."""
    env = os.environ if env is None else env
    try:
        settings = load_settings(cli, env=env, config_file=config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    for name, default in WORKER_DEFAULTS.items():
        if cli.get(name) is None and not _set_outside_cli(name, config_file, env):
            setattr(settings, name, default)
    return settings


def _set_outside_cli(name: str, config_file: str | Path | None, env: Mapping[str, str]) -> bool:
    """Whether a STRATUS_* variable or the settings file load_settings read gives `name`."""
    if f"{ENV_PREFIX}{name.upper()}" in env:
        return True
    path = Path(config_file or env.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG_FILE)
    if not path.is_file():
        return False
    with path.open("rb") as f:  # load_settings has read it already: it exists and parses
        return name in tomllib.load(f)


def worker_options(
    model_spec: str,
    settings: Settings,
    *,
    gateways: tuple[str, ...] = (),
    worker_id: str | None = None,
    advertise_url: str | None = None,
    gateway_ca: str | None = None,
    insecure_http: bool = False,
    heartbeat_interval: float = 2.0,
    keepalive_interval: float = 5.0,
):
    """Check what a worker was given and make its `WorkerOptions` (nothing is bound or loaded);
    click.UsageError or ClickException when something is wrong."""
    from stratus.cluster.secret import ENV_VAR, ClusterSecretError, load_cluster_secret
    from stratus.cluster.worker_main import WorkerOptions
    from stratus.cluster.worker_replica import client_tls
    from stratus.net.urls import check_http_url, is_loopback

    env = {ENV_VAR: settings.cluster_secret} if settings.cluster_secret else {}
    try:
        name, path = parse_model_spec(model_spec)
        secret = load_cluster_secret(settings.cluster_secret_file, env)
    except (ConfigError, ClusterSecretError) as exc:
        raise click.UsageError(str(exc)) from None
    if secret is None:
        raise click.UsageError(
            "a cluster secret is required: set STRATUS_CLUSTER_SECRET or --cluster-secret-file"
        )
    from stratus.hub import HubError, resolve_model

    try:
        path = str(resolve_model(path))  # a Hugging Face name: its snapshot in the cache
    except HubError as exc:
        raise click.ClickException(str(exc)) from None
    if not (Path(path) / "config.json").is_file() and not is_gguf(path):
        raise click.ClickException(
            f"model '{name}': no checkpoint at {path} (config.json missing, and not a GGUF file)"
        )
    host = settings.host
    tls = bool(settings.tls_cert and settings.tls_key)  # both or neither: config checked it
    if not tls and not is_loopback(host) and not insecure_http:
        raise click.ClickException(
            f"refusing plain HTTP on {host}: the cluster secret would cross the network in clear; give "
            "--tls-cert and --tls-key, listen on 127.0.0.1, or pass --insecure-http on a trusted network"
        )
    if settings.tls_client_ca and not tls:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    for gateway in gateways:  # heartbeats carry the cluster secret
        try:
            check_http_url(gateway, "--gateway", plain_remote=insecure_http)
        except ValueError as exc:
            raise click.UsageError(f"{exc} (--insecure-http)") from None
    return WorkerOptions(
        model=name,
        path=Path(path),
        host=host,
        port=settings.port,
        secret=secret,
        engine=settings.engine,
        worker_id=worker_id,
        advertise_url=advertise_url,
        gateways=tuple(gateways),
        gateway_verify=client_tls(gateway_ca),
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        tls_client_ca=settings.tls_client_ca,
        isolation=settings.engine_isolation,
        heartbeat_interval=heartbeat_interval,
        keepalive_interval=keepalive_interval,
        drain_timeout=settings.drain_timeout,
        log_level=settings.log_level.lower(),
        log_format=settings.log_format,
        otlp_endpoint=settings.otlp_endpoint,
    )


def _worker(model_spec: str, config_file: str | None, **flags: Any) -> None:
    """Serve one model to gateways over an internal HTTP API (authenticated with the cluster secret).

    \b
    Example:
      STRATUS_CLUSTER_SECRET=... stratus worker --model demo=models/demo --port 8101 \\
          --gateway http://127.0.0.1:8000

    Credential: the cluster secret (STRATUS_CLUSTER_SECRET, or --cluster-secret-file), shared with
    the gateway; no API key.
    """
    from stratus.cluster.worker_main import build_worker
    from stratus.observe.logs import setup_logging

    ctx = click.get_current_context()
    cli = {}
    for name in (*SHARED_SETTINGS, *ENGINE_NAMES):  # given on the command line: beats env and toml
        value = flags.pop(name)
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            cli[name] = value
    settings = worker_settings(cli, config_file)
    options = worker_options(model_spec, settings, **flags)
    setup_logging(options.log_level, options.log_format)
    sock = bind_socket(options.host, options.port)
    server = build_worker(options, sock)
    click.echo(f"stratus worker {server.worker.worker_id} listening on {server.url}  (model {options.model})")
    sys.stdout.flush()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a drained worker is a clean exit (see serve.run_server)
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    click.echo("stratus worker: stopped", err=True)


def _command() -> click.Command:
    command = engine_options(_CONFIG_OPTION(_worker))
    for option in reversed(_WORKER_OPTIONS):
        command = option(command)
    return click.command(name="worker")(command)


worker = _command()
