"""Requests for a model served by OpenAI-compatible upstreams (cluster/upstream.py), proxied.

A chat or completions request whose model no replica here serves, but an admin-registered
upstream does, goes through the same steps as any other: identify and guard (already done),
authorize the model, admit (the prompt is estimated from its length, as the upstream's tokenizer
is not here), then the upstream, then account with the usage the upstream reports (streams are
sent with `stream_options.include_usage` forced on; the usage chunk reaches the client only if
it asked for it), then the audit record. Only fields of the validated request body are forwarded,
with `model` rewritten; answers carry the model name the client used.

A stream that fails midway cannot move to another upstream (they speak text, not token ids): it
ends with an error event saying so, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import anyio
import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from stratus.api.deps import Gateway
from stratus.api.schemas import CompletionRequest
from stratus.api.streaming import DONE, JSONBody, SSEResponse, event
from stratus.cluster.router import request_work
from stratus.cluster.upstream import Opened, Upstream, UpstreamFailed, UpstreamPool
from stratus.observe.tracing import span
from stratus.request.context import Usage
from stratus.request.errors import APIError, unavailable
from stratus.store import Store
from stratus.store import upstreams as table

log = logging.getLogger("stratus.api")

CHARS_PER_TOKEN = 3  # a cautious estimate for admission; usage is reconciled from the upstream
DEFAULT_MAX_TOKENS = 1024  # reserved when the client sets no max_tokens


class Upstreams:
    """The registered upstreams as this gateway sees them: re-read from the store (keys
    decrypted) at most every `ttl` seconds, so a change by any gateway or the CLI takes effect.

    Requests never read the database on the event loop: once the list is older than `ttl`,
    `current()` re-reads it in a thread, one read shared by all the requests that arrive
    meanwhile. A database that cannot be read keeps the last list (logged, retried after `ttl`),
    so an unknown model stays a 404 rather than becoming a 503."""

    def __init__(self, store: Store, secrets, ttl: float = 2.0):
        self.store = store
        self.secrets = secrets  # () -> SecretStore, made on first use (it loads the master key)
        self.ttl = ttl
        self.pool = UpstreamPool()
        self._loaded_at = float("-inf")
        self._loading: asyncio.Task | None = None

    def _read(self) -> list[Upstream]:
        with self.store.connect() as conn:
            rows = table.list_all(conn)
        box = self.secrets() if rows else None
        return [
            Upstream(
                r["name"],
                r["model"],
                r["base_url"],
                r["upstream_model"],
                box.get(table.secret_name(r["name"])) or "",
            )
            for r in rows
        ]

    async def refresh(self) -> None:
        """Read now (admin changes, which must show at once): in a thread, like every read."""
        self.pool.set(await asyncio.to_thread(self._read))
        self._loaded_at = time.monotonic()

    async def current(self) -> UpstreamPool:
        if time.monotonic() - self._loaded_at > self.ttl:
            if self._loading is None or self._loading.done():
                self._loading = asyncio.create_task(self._reload(), name="stratus-upstreams")
            await asyncio.shield(self._loading)  # one read shared by every request that waits
        return self.pool

    async def _reload(self) -> None:
        try:
            upstreams = await asyncio.to_thread(self._read)
        except Exception as exc:  # the message may name the database; its type is enough here
            log.warning(
                "could not read the registered upstreams (%s); keeping the last list", type(exc).__name__
            )
        else:
            self.pool.set(upstreams)
        self._loaded_at = time.monotonic()  # a failed read is retried after ttl, not per request

    async def serves(self, model: str) -> bool:
        return model in (await self.current()).models()


def secret_store(store: Store, data_dir: str):
    """A maker of the SecretStore for upstream keys; the master key is loaded on first use."""
    made: list = []

    def get():
        if not made:
            from stratus.security.secrets import SecretStore, load_keyring

            made.append(SecretStore(store, load_keyring(data_dir)))
        return made[0]

    return get


def _estimate_prompt_tokens(raw: dict) -> int:
    text = raw.get("messages") if "messages" in raw else raw.get("prompt")
    return max(1, len(orjson.dumps(text)) // CHARS_PER_TOKEN)


# Fields with which some OpenAI-compatible servers (LiteLLM, for one) let a request choose its own
# backend, credentials, headers or routing: the upstream and its key are the operator's choice,
# never the client's, so these are never passed on. A blocklist (the issue asks for provider
# extras to pass), so it also drops every field named like a credential (CREDENTIAL_HINTS).
ROUTING_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "url",
        "api_key",
        "api_version",
        "api_type",
        "extra_headers",
        "headers",
        "custom_llm_provider",
        "user_config",  # LiteLLM: a whole router config (model list, api_base, api_key) per request
        "model_list",
        "fallbacks",
        "organization",
        "deployment_id",
        "vertex_project",
        "vertex_location",
        "aws_region_name",
    }
)
# e.g. aws_secret_access_key, aws_session_token, azure_ad_token, vertex_credentials
CREDENTIAL_HINTS = ("api_key", "access_key", "secret", "credential", "password", "session_token", "ad_token")


def _routing(name: str) -> bool:
    lowered = name.lower()
    return lowered in ROUTING_FIELDS or any(h in lowered for h in CREDENTIAL_HINTS)


def _forwarded(raw: dict) -> dict:
    """What the client sent, as sent (tools, response_format, logit_bias, provider extras: the
    upstream acts on them), less the routing and credential fields; the gateway's own checks have
    passed."""
    return {k: v for k, v in raw.items() if not _routing(k)}


async def served_upstream(gw: Gateway, model: str) -> Upstreams | None:
    """The upstreams, if `model` is served by an OpenAI-compatible upstream (and by no replica
    here). The caller is authorized for it first: it learns nothing of the upstream before that."""
    upstreams = gw.state.upstreams
    if upstreams is None or model in gw.state.registry.models or not await upstreams.serves(model):
        return None
    await gw.authorize(model)
    return upstreams


async def maybe_proxy(
    request: Request, gw: Gateway, path: str, body: BaseModel, raw: dict
) -> Response | None:
    """The response if `body.model` is an upstream model (and no replica here serves it), else None."""
    model = body.model  # type: ignore[attr-defined]
    upstreams = await served_upstream(gw, model)
    if upstreams is None:
        return None
    # Every prompt of a completions request is n sequences upstream, as on the local engine.
    prompts = body.prompts() if isinstance(body, CompletionRequest) else [None]
    sequences = (getattr(body, "n", 1) or 1) * len(prompts)
    cap_field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    requested = getattr(body, cap_field, None) or DEFAULT_MAX_TOKENS
    prompt_estimate = _estimate_prompt_tokens(raw)
    await gw.admit(prompt_estimate, requested * sequences, sequences)  # admit
    payload = _forwarded(raw)
    # What admit reserved is the most the caller may get: the upstream is held to it, under the
    # one name the client used (a null, or a larger value under the other name, is not passed on).
    payload.pop("max_tokens", None)
    payload.pop("max_completion_tokens", None)
    payload[cap_field] = requested
    wants_usage = bool(body.include_usage()) if body.stream else False  # type: ignore[attr-defined]
    if body.stream:  # type: ignore[attr-defined]
        payload["stream_options"] = {"include_usage": True}
    try:
        with span("stratus.upstream") as traced:  # to the upstream's answer; it may continue the trace
            opened = await upstreams.pool.open(
                model, path, payload, work=request_work(prompt_estimate, requested * sequences)
            )
            if traced is not None:
                traced.set_attribute("stratus.upstream", opened.upstream.name)
                traced.set_attribute("http.response.status_code", opened.response.status_code)
    except UpstreamFailed as exc:
        log.warning("request %s: %s", gw.ctx.request_id, exc)
        await gw.settle(Usage())
        raise unavailable(
            f"{exc}; retry shortly.", gw.state.settings.retry_after, "upstream_unavailable"
        ) from None
    status = opened.response.status_code
    if status >= 400:  # the client's own mistake, as the upstream judged it
        error = await _error_of(opened)
        await gw.settle(Usage())
        raise APIError(400, error, code="upstream_rejected")
    if not body.stream:  # type: ignore[attr-defined]
        return await _complete(gw, opened, model, prompt_estimate)
    return SSEResponse(_events(gw, opened, model, prompt_estimate, wants_usage))


async def _error_of(opened: Opened) -> str:
    try:
        data = orjson.loads(await opened.response.aread())
        message = str(data["error"]["message"])[:500]
    except Exception:
        message = f"HTTP {opened.response.status_code}"
    await opened.close(0, True)
    return f"The upstream refused the request: {message}"


async def _complete(gw: Gateway, opened: Opened, model: str, prompt_estimate: int) -> Response:
    try:
        data = orjson.loads(await opened.response.aread())
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except Exception as exc:
        await opened.close(0, False)
        await gw.settle(Usage(prompt_tokens=prompt_estimate))
        log.warning("request %s: upstream %s failed: %s", gw.ctx.request_id, opened.upstream.name, exc)
        raise unavailable("The upstream failed while answering; retry.", 2, "upstream_failed") from None
    usage = _usage(data.get("usage"), prompt_estimate, 0)
    await opened.close(usage.completion_tokens, True)
    gw.ctx.usage = usage  # charged at the record step, once the audit trail accepted the response
    data["model"] = model
    return JSONBody(data)


def _usage(reported, prompt_estimate: int, counted: int) -> Usage:
    if isinstance(reported, dict):
        try:
            return Usage(int(reported.get("prompt_tokens") or 0), int(reported.get("completion_tokens") or 0))
        except (TypeError, ValueError):
            pass
    return Usage(prompt_tokens=prompt_estimate, completion_tokens=counted)


async def _events(
    gw: Gateway, opened: Opened, model: str, prompt_estimate: int, wants_usage: bool
) -> AsyncIterator[bytes]:
    reported, counted, ok, done = None, 0, False, False
    try:
        async for line in opened.response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = orjson.loads(data)
            if "error" in chunk and "choices" not in chunk:
                raise RuntimeError(f"the upstream sent an error: {str(chunk['error'])[:200]}")
            chunk["model"] = model
            if chunk.get("usage"):
                reported = chunk["usage"]
            if not chunk.get("choices"):
                if chunk.get("usage") and wants_usage:
                    yield event(chunk)
                continue
            counted += len(chunk["choices"])  # about a token per choice delta, if no usage comes
            if not wants_usage:
                chunk.pop("usage", None)
            yield event(chunk)
        if not done:
            raise RuntimeError("the upstream ended the stream without [DONE]")
        ok = True
        yield DONE
    except (GeneratorExit, anyio.get_cancelled_exc_class()):
        gw.ctx.outcome = "client_disconnect"
        raise
    except Exception as exc:
        gw.ctx.outcome = "error"
        log.warning(
            "request %s: upstream %s failed mid-stream: %s", gw.ctx.request_id, opened.upstream.name, exc
        )
        message = (
            "The upstream serving this model failed mid-stream, so the response is incomplete; a "
            "stream from an OpenAI-compatible upstream cannot be resumed elsewhere. Retry the request."
        )
        gw.ctx.error = message
        yield event(APIError(503, message, code="upstream_failed_midstream").body())
        yield DONE
    finally:
        with anyio.CancelScope(shield=True):
            usage = _usage(reported, prompt_estimate, counted)
            await opened.close(usage.completion_tokens, ok)
            await gw.settle(usage)
