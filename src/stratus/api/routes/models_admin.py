"""/admin/models: load and unload models on a running gateway, without a restart.

    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/models \\
         -d '{"name": "qwen", "model": "Qwen/Qwen2.5-0.5B-Instruct"}'       # 202: downloading
    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/models
    curl -X DELETE -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/models/qwen

Needs `models.manage` (admins); every call is audited like any request, naming the model. A
model is a checkpoint directory or GGUF file on the gateway's machine, or a Hugging Face name
(downloaded into the Hugging Face cache first). It loads in this gateway's own engine process,
in the background: `GET` shows it downloading (with a percentage), loading, ready, or failed
with the reason. Removing it makes it unknown to new requests at once (404), lets the requests
it is running finish for up to --drain-timeout seconds (then they fail with an error), and
frees its engine. What is added here lasts until the gateway stops (add it to --model or
stratus.toml to keep it); `stratus worker`s and Ray replicas keep the models they were started
with, so a gateway started with --no-local-models or --ray-address refuses to load one itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from stratus.api.deps import app_state, parse_body, principal
from stratus.api.errors import ErrorResponse
from stratus.api.registry import ModelConflict, ServedModel
from stratus.api.streaming import JSONBody
from stratus.config import MODEL_NAME_RE, TASKS
from stratus.engine.gguf import is_gguf
from stratus.hub import HubError, parse_source, resolve_model
from stratus.request.errors import APIError
from stratus.security.identity import Principal

router = APIRouter(prefix="/admin", tags=["admin"])
NO_STORE = {"Cache-Control": "no-store"}


class ModelAdd(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="The model name clients will use", pattern=MODEL_NAME_RE.pattern)
    model: str = Field(
        min_length=1,
        max_length=4096,
        description="A checkpoint directory or .gguf file on the gateway's machine, or a Hugging "
        "Face name org/repo[@revision][:file.gguf]",
    )
    task: Literal["generate", "embed"] | None = Field(None, description="What it is served for")
    tensor_parallel_size: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Split its replica's layers over this many processes (docs/PARALLEL.md)",
    )
    pipeline_parallel_size: int | None = Field(
        None, ge=1, le=64, description="Split its replica's layers into this many stages, a process each"
    )


class ReplicaOut(BaseModel):
    id: str
    kind: str


class ManagedModel(BaseModel):
    name: str
    state: Literal["downloading", "loading", "ready", "failed", "restarting", "unavailable"]
    progress: float | None = Field(None, description="While downloading: percent fetched, when known")
    error: str | None
    source: str | None = Field(description="What it was asked to serve (a path or a Hugging Face name)")
    path: str | None
    task: str
    max_model_len: int | None
    quantization: str | None
    replicas: list[ReplicaOut]
    created: int
    added_by: str | None


class ManagedModelList(BaseModel):
    data: list[ManagedModel]


class ModelRemoved(BaseModel):
    name: str
    removed: bool
    running: int = Field(description="Requests it was running when removed (they finished or failed)")


def _view(request: Request, m: ServedModel) -> dict:
    registry = app_state(request).registry
    return {
        "name": m.name,
        "state": registry.state_of(m),
        "progress": round(m.progress * 100, 1) if m.progress is not None else None,
        "error": m.error,
        "source": m.source or (str(m.path) if m.path is not None else None),
        "path": str(m.path) if m.path is not None else None,
        "task": m.task,
        "max_model_len": m.max_model_len,
        "quantization": m.quantization,
        "replicas": [{"id": r.id, "kind": r.kind} for r in m.replicas.replicas],
        "created": m.created,
        "added_by": m.added_by,
    }


def _schema() -> dict:
    schema = ModelAdd.model_json_schema()
    schema.pop("title", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _errors(*codes: int) -> dict:
    text = {
        400: "Invalid field, or no checkpoint at that path",
        404: "No such model",
        409: "The name is taken, or the model cannot be loaded or unloaded here",
    }
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


def _local_path(spec: str) -> Path:
    """A path spec that holds a checkpoint, or a 400 that says what is missing."""
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file() and not is_gguf(path):
        raise APIError(
            400,
            f"No checkpoint at {spec} on the gateway's machine (a directory with config.json, or a "
            ".gguf file).",
            param="model",
        )
    return path


def _resolve(spec: str, progress) -> Path:
    """In a thread: a Hugging Face name's local copy (downloaded), checked like a path."""
    path = resolve_model(spec, progress)
    if not (path / "config.json").is_file() and not is_gguf(path):
        raise ValueError(f"{spec}: no checkpoint at {path} (config.json missing)")
    return path


@router.get(
    "/models",
    summary="Every model of this gateway, with its state (downloading n%, loading, ready, failed)",
    response_model=ManagedModelList,
)
async def list_managed(request: Request, me: Principal = Depends(principal)) -> JSONBody:
    models = list(app_state(request).registry.models.values())
    return JSONBody({"data": [_view(request, m) for m in models]}, headers=NO_STORE)


@router.post(
    "/models",
    summary="Load a model on this gateway (in the background)",
    status_code=202,
    response_model=ManagedModel,
    responses=_errors(400, 409),
    openapi_extra=_schema(),
)
async def add_model(request: Request, me: Principal = Depends(principal)) -> JSONBody:
    body, _ = await parse_body(request, ModelAdd)
    request.state.ctx.name_model(body.name)  # the audit record names the model
    state = app_state(request)
    settings = state.settings
    if not settings.local_models or settings.ray_address:
        how = "--ray-address (Ray replicas)" if settings.ray_address else "--no-local-models"
        raise APIError(
            409,
            f"This gateway serves no models of its own ({how}): start a `stratus worker --model` "
            "for it, or register an upstream.",
            param="model",
        )
    upstream_models = (await state.upstreams.current()).models() if state.upstreams is not None else set()
    if body.name in upstream_models:  # type: ignore[attr-defined]  # (mypy misreads UpstreamPool's set)
        raise APIError(409, f"The model '{body.name}' is served by an upstream here.", param="name")
    try:
        hub_name = parse_source(body.model)
    except HubError as exc:
        raise APIError(400, str(exc), param="model") from None
    source = body.model if hub_name is not None else str(_local_path(body.model).resolve())
    assert body.task is None or body.task in TASKS
    try:
        parallel = None
        if body.tensor_parallel_size is not None or body.pipeline_parallel_size is not None:
            parallel = (body.tensor_parallel_size or 1, body.pipeline_parallel_size or 1)
        model = state.registry.add(
            body.name,
            source,
            _resolve,
            body.task,
            added_by=me.user,
            download=hub_name is not None,
            parallel=parallel,
        )
    except ModelConflict as exc:
        raise APIError(409, str(exc), param="name") from None
    return JSONBody(_view(request, model), status_code=202, headers=NO_STORE)


@router.delete(  # {name:path}: a model may be named org/repo; BASE/adapters/NAME is adapters.py's
    "/models/{name:path}",
    summary="Unload a model: new requests get 404, running ones finish (up to --drain-timeout)",
    response_model=ModelRemoved,
    responses=_errors(404, 409),
)
async def remove_model(name: str, request: Request, me: Principal = Depends(principal)) -> JSONBody:
    request.state.ctx.name_model(name)
    state = app_state(request)
    try:
        running = await state.registry.remove(name, state.settings.drain_timeout)
    except KeyError:
        raise APIError(404, f"No model named '{name}' is served here.", param="name") from None
    except ModelConflict as exc:
        raise APIError(409, str(exc), param="name") from None
    if state.cache is not None:  # answers it gave are not answers of whatever takes its name
        state.cache.clear()
    return JSONBody({"name": name, "removed": True, "running": running}, headers=NO_STORE)
