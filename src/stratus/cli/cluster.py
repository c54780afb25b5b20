"""`stratus worker`: one engine behind an authenticated internal HTTP API, joining a gateway.

    export STRATUS_CLUSTER_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    stratus serve --no-local-models ...              # the gateway, with the same secret
    stratus worker --model demo=models/demo --port 8101 --gateway http://127.0.0.1:8000

`stratus upstreams add|list|remove` (OpenAI-compatible upstreams) live in cli/upstreams.py.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import click


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
            help="Allow plain http:// workers off loopback (the cluster secret then crosses the "
            "network in clear; only on a trusted network). [default: off]",
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


_WORKER_OPTIONS = [
    click.option(
        "--model", "model_spec", required=True, metavar="NAME=PATH", help="The checkpoint to serve."
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
]


def worker(model_spec: str, **flags: Any) -> None:
    """Serve one model to gateways over an internal HTTP API (authenticated with the cluster secret).

    \b
    Example:
      STRATUS_CLUSTER_SECRET=... stratus worker --model demo=models/demo --port 8101 \\
          --gateway http://127.0.0.1:8000
    """
    from pathlib import Path

    from stratus.cli.main import _bind
    from stratus.cluster.secret import ClusterSecretError, load_cluster_secret
    from stratus.cluster.worker_main import WorkerOptions, build_worker
    from stratus.cluster.worker_replica import client_tls
    from stratus.config import ConfigError, parse_model_spec
    from stratus.engine.config import EngineConfig
    from stratus.net.urls import check_http_url, is_loopback

    try:
        name, path = parse_model_spec(model_spec)
        secret = load_cluster_secret(flags.pop("cluster_secret_file"))
    except (ConfigError, ClusterSecretError) as exc:
        raise click.UsageError(str(exc)) from None
    if secret is None:
        raise click.UsageError(
            "a cluster secret is required: set STRATUS_CLUSTER_SECRET or --cluster-secret-file"
        )
    if not (Path(path) / "config.json").is_file():
        raise click.ClickException(f"model '{name}': no checkpoint at {path} (config.json missing)")
    host = flags.pop("host")
    tls = bool(flags["tls_cert"] and flags["tls_key"])
    if bool(flags["tls_cert"]) != bool(flags["tls_key"]):
        raise click.UsageError("TLS needs both --tls-cert and --tls-key")
    insecure_http = flags.pop("insecure_http")
    if not tls and not is_loopback(host) and not insecure_http:
        raise click.ClickException(
            f"refusing plain HTTP on {host}: the cluster secret would cross the network in clear; give "
            "--tls-cert and --tls-key, listen on 127.0.0.1, or pass --insecure-http on a trusted network"
        )
    if flags["tls_client_ca"] and not tls:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    engine_fields = {k: flags.pop(k) for k in list(flags) if k in EngineConfig.__dataclass_fields__}
    try:  # EngineConfig checks its own fields
        engine = EngineConfig(**{k: v for k, v in engine_fields.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    gateway_ca = flags.pop("gateway_ca")
    for gateway in flags["gateways"]:  # heartbeats carry the cluster secret
        try:
            check_http_url(gateway, "--gateway", plain_remote=insecure_http)
        except ValueError as exc:
            raise click.UsageError(f"{exc} (--insecure-http)") from None
    options = WorkerOptions(
        model=name,
        path=Path(path),
        host=host,
        port=flags.pop("port"),
        secret=secret,
        engine=engine,
        worker_id=flags.pop("worker_id"),
        advertise_url=flags.pop("advertise_url"),
        gateways=tuple(flags.pop("gateways")),
        gateway_verify=client_tls(gateway_ca),
        tls_cert=flags.pop("tls_cert"),
        tls_key=flags.pop("tls_key"),
        tls_client_ca=flags.pop("tls_client_ca"),
        isolation=flags.pop("engine_isolation"),
        heartbeat_interval=flags.pop("heartbeat_interval"),
        keepalive_interval=flags.pop("keepalive_interval"),
        drain_timeout=flags.pop("drain_timeout"),
        log_level=flags.pop("log_level"),
    )
    logging.basicConfig(
        level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per heartbeat
    sock = _bind(host, options.port)
    server = build_worker(options, sock)
    click.echo(f"stratus worker {server.worker.worker_id} listening on {server.url}  (model {name})")
    sys.stdout.flush()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a drained worker is a clean exit (see cli.run_server)
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    click.echo("stratus worker: stopped", err=True)


def register(main: click.Group, engine_options) -> None:
    """Add `stratus worker` to `main`; `engine_options` is cli.py's one-flag-per-EngineConfig-field
    decorator (passed in: importing cli.py from here would be circular)."""
    command = engine_options(worker)
    for option in reversed(_WORKER_OPTIONS):
        command = option(command)
    main.add_command(click.command(name="worker")(command))
    from stratus.cli.upstreams import upstreams

    main.add_command(upstreams)
