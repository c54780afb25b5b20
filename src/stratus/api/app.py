"""`create_app()`: the gateway as a FastAPI app, wired from settings.

    app = create_app(Settings(models={"demo": "models/demo"}))
    uvicorn.run(app, host="127.0.0.1", port=8000)

The app starts listening at once (/health answers) and loads its models in the background;
/ready turns 200 when every model is loaded and warm. Engines passed in through `engines=`
are used as they are and left running at shutdown (the caller owns them).

Access control is on unless `settings.auth` is False: without `identity=`, the app opens the store
named by the settings (api/auth.py: default_identity). `identity=OPEN_ACCESS` is the open gateway.
The request path's stages are composed in api/pipeline.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI

import stratus
from stratus.api import auth, upstream_proxy
from stratus.api.errors import install_error_handlers
from stratus.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from stratus.api.openapi import build_openapi
from stratus.api.pipeline import build_pipeline
from stratus.api.registry import ModelRegistry
from stratus.api.response_cache import ResponseCache
from stratus.api.routes import (
    admin,
    admin_audit,
    chat,
    completions,
    embeddings,
    internal,
    models,
    ops,
    responses,
    secrets,
    tokenize,
    ui,
    upstreams,
    usage,
)
from stratus.api.security_headers import SecurityHeadersMiddleware
from stratus.api.state import AppState
from stratus.config import Settings
from stratus.observe.metrics import Metrics
from stratus.observe.tracing import Tracing
from stratus.request.stage import Stage
from stratus.security.stage import IdentityStage

if TYPE_CHECKING:
    from stratus.engine import Engine

log = logging.getLogger("stratus.api")

DESCRIPTION = (
    "An OpenAI-compatible API in front of stratus engines. Errors use the OpenAI envelope "
    '`{"error": {"message", "type", "param", "code"}}`.'
)


def create_app(
    settings: Settings | None = None,
    *,
    engines: dict[str, Engine] | None = None,
    identity: Stage | None = None,
) -> FastAPI:
    settings = settings or Settings()
    # With --ray-address every model is served by Ray actors, placed once the app starts; with
    # --no-local-models every replica joins later (stratus worker).
    local = settings.local_models and not settings.ray_address
    paths = dict(settings.model_paths()) if local and (not engines or settings.models) else {}
    registry = ModelRegistry(
        paths,
        engines,
        settings.engine,
        settings.engine_isolation,
        settings.routing_policies(),
        tasks=settings.model_tasks(),
        pooling=settings.pooling_modes(),
        embed_normalize=settings.embed_normalize,
        loras=settings.lora_adapters(),
        parallel=settings.parallel_layouts(),
    )
    cache = None
    if settings.response_cache_size > 0:
        cache = ResponseCache(settings.response_cache_size, settings.response_cache_ttl)
    identity = identity if identity is not None else auth.default_identity(settings)
    access = identity.access if isinstance(identity, IdentityStage) else None
    pipeline = build_pipeline(settings, identity, access)
    state = AppState(
        settings=settings,
        registry=registry,
        metrics=Metrics(registry.stats),
        pipeline=pipeline,
        cache=cache,
        access=access,
        tracing=Tracing.otlp(settings.otlp_endpoint, "stratus-gateway"),
    )
    pipeline.bind(state)
    if settings.ray_address:
        from stratus.cluster.ray_cluster import RayCluster

        state.ray_cluster = RayCluster.from_settings(settings, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(registry.load_all(), name="stratus-load-models")
        placing = None
        if state.ray_cluster is not None:
            placing = asyncio.create_task(state.ray_cluster.serve(), name="stratus-place-ray-replicas")
        try:
            yield
        finally:
            for task in (loading, placing):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if state.ray_cluster is not None:
                await state.ray_cluster.close()
            await registry.shutdown()
            if state.upstreams is not None:  # its connections to the upstreams
                await state.upstreams.pool.aclose()
            # The audit writer drains before the store it writes to closes (off the event loop:
            # it waits for a commit).
            await asyncio.to_thread(pipeline.close)
            if state.access is not None:
                state.access.store.close()
            await asyncio.to_thread(state.tracing.shutdown)  # the last spans, to the collector

    app = FastAPI(
        title="stratus",
        version=stratus.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs is routes/ui.py: Swagger UI from the package, not a CDN
        redoc_url=None,
    )
    app.state.stratus = state
    install_error_handlers(app)
    auth.install(app)
    for module in (
        chat,
        completions,
        embeddings,
        responses,
        models,
        tokenize,
        ops,
        admin,
        usage,
        admin_audit,
        ui,
    ):
        app.include_router(module.router)
    from stratus.api.routes import (
        cluster_admin,  # POST /admin/cluster/scale (Ray replicas)
        models_admin,  # /admin/models: load and unload at run time
    )

    app.include_router(cluster_admin.router)
    from stratus.api.routes import adapters  # LoRA adapters of the models served here

    app.include_router(adapters.router)
    app.include_router(models_admin.router)
    internal.mount(app, settings, registry)  # /internal/v1/workers when a cluster secret is set
    if access is not None:  # OpenAI-compatible upstreams: registered by admins, keys encrypted
        state.upstreams = upstream_proxy.Upstreams(
            access.store, upstream_proxy.secret_store(access.store, settings.data_dir)
        )
        app.include_router(upstreams.router)
        app.include_router(secrets.router)  # /admin/secrets: stored encrypted under the same master key
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout=settings.body_read_timeout
    )
    app.add_middleware(RequestContextMiddleware, state=state)  # sees every outcome
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: even a refusal gets the headers
    if state.access is not None:
        app.openapi = lambda: auth.document_auth(build_openapi(app))  # type: ignore[method-assign]
    else:
        app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app
