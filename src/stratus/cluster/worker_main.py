"""Run one `stratus worker`: load the engine, serve the internal API, register with a gateway.

The socket is bound first and a banner printed, so the port is known at once; /internal/v1/health
answers 503 until the model is warm, and only then does the worker register. SIGTERM: the worker
deregisters (the gateway drains it: nothing new arrives), refuses new requests, lets in-flight
ones finish for up to `drain_timeout` seconds, then stops the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from stratus.cluster import wire
from stratus.cluster.registration import Heartbeat
from stratus.cluster.worker_server import WorkerState, create_worker_app
from stratus.engine.config import EngineConfig
from stratus.net.tls import uvicorn_options
from stratus.observe.logs import uvicorn_log_config
from stratus.observe.tracing import Tracing

log = logging.getLogger("stratus.worker")


@dataclass
class WorkerOptions:
    model: str
    path: Path
    host: str
    port: int
    secret: bytes
    engine: EngineConfig
    worker_id: str | None = None
    advertise_url: str | None = None
    gateways: tuple[str, ...] = ()  # register with each (several gateways may share workers)
    gateway_verify: ssl.SSLContext | bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    isolation: str = "process"
    heartbeat_interval: float = 2.0
    keepalive_interval: float = 5.0  # seconds of silence in a stream before a keepalive line
    drain_timeout: float = 30.0
    log_level: str = "info"
    log_format: str = "text"  # text | json (observe/logs.py)
    otlp_endpoint: str | None = None  # OpenTelemetry traces (observe/tracing.py); None: off


class WorkerServer(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM/SIGINT deregisters before the drain begins."""

    heartbeats: list[Heartbeat] = []
    worker: WorkerState | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.worker is not None and self.worker.state == "serving":
            self.worker.state = "draining"
            loop = asyncio.get_event_loop()
            for heartbeat in self.heartbeats:
                loop.call_soon_threadsafe(lambda h=heartbeat: loop.create_task(h.deregister()))
        super().handle_exit(sig, frame)


def build_worker(options: WorkerOptions, sock: socket.socket) -> WorkerServer:
    port = sock.getsockname()[1]
    scheme = "https" if options.tls_cert else "http"
    shown = f"[{options.host}]" if ":" in options.host else options.host
    url = options.advertise_url or f"{scheme}://{shown}:{port}"
    worker_id = options.worker_id or f"{options.model}@{shown}:{port}"
    worker = WorkerState(
        worker_id,
        options.model,
        options.secret,
        path=options.path,
        keepalive=options.keepalive_interval,
        tracing=Tracing.otlp(options.otlp_endpoint, "stratus-worker"),
    )
    info = {"id": worker_id, "model": options.model, "url": url}
    heartbeats = [
        Heartbeat(
            gateway,
            options.secret,
            info,
            lambda: wire.stats_to_dict(worker.engine.stats()) if worker.engine else {},
            interval=options.heartbeat_interval,
            verify=options.gateway_verify,
        )
        for gateway in options.gateways
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_load_and_register(options, worker, heartbeats), name="stratus-worker")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for heartbeat in heartbeats:
                await heartbeat.deregister(final=True)
                await heartbeat.close()
            if worker.engine is not None:
                await worker.engine.shutdown()
            await asyncio.to_thread(worker.tracing.shutdown)  # the last spans, to the collector

    config = uvicorn.Config(
        create_worker_app(worker, lifespan),
        log_level=options.log_level,
        log_config=uvicorn_log_config(options.log_format),
        access_log=False,
        timeout_graceful_shutdown=options.drain_timeout,
        lifespan="on",
        **uvicorn_options(options.tls_cert, options.tls_key, options.tls_client_ca),
    )
    server = WorkerServer(config)
    server.worker, server.heartbeats = worker, heartbeats
    server.url = url  # type: ignore[attr-defined]
    return server


async def _load_and_register(
    options: WorkerOptions, worker: WorkerState, heartbeats: list[Heartbeat]
) -> None:
    from stratus.engine import Engine

    try:
        log.info("loading model %s from %s", options.model, options.path)
        engine = await asyncio.to_thread(
            Engine.from_pretrained, options.path, options.engine, options.isolation
        )
        worker.engine = engine
        await engine.start()
    except Exception as exc:
        worker.state = "failed"
        log.error("model %s failed to load: %s: %s", options.model, type(exc).__name__, exc)
        return
    worker.state = "serving"
    log.info("worker %s ready (context window %d tokens)", worker.worker_id, engine.max_model_len)
    await asyncio.gather(*(h.run() for h in heartbeats))
