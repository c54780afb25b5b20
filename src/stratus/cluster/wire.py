"""Engine data as plain JSON-able dicts, for replicas reached over a wire (worker HTTP, Ray).

    body = request_to_dict(GenerateRequest(prompt_token_ids=[1, 2], params=SamplingParams(seed=3)))
    request = request_from_dict(body)          # equal to the original
    line = delta_to_dict(delta)                # one NDJSON line of a worker's stream

`*_from_dict` accept only known fields with the right JSON types: a malformed body is the
caller's fault (ValidationError, a 400 at the worker), never a crash. Sampling ranges are
checked by the engine itself (SamplingParams.validate), as for any request.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stratus.engine.types import (
    Delta,
    EngineStats,
    GenerateRequest,
    SamplingParams,
    TokenLogprob,
    ValidationError,
)

_PARAM_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}
_REQUEST_FIELDS = {f.name for f in dataclasses.fields(GenerateRequest)}
_DELTA_FIELDS = {f.name for f in dataclasses.fields(Delta)}
_STATS_FIELDS = [f.name for f in dataclasses.fields(EngineStats)]


def request_to_dict(request: GenerateRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def request_from_dict(data: Any) -> GenerateRequest:
    if not isinstance(data, dict):
        raise ValidationError("the request must be a JSON object")
    unknown = set(data) - _REQUEST_FIELDS
    if unknown:
        raise ValidationError(f"unknown request fields: {', '.join(sorted(unknown))}")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ValidationError("params must be an object", "params")
    unknown = set(params) - _PARAM_FIELDS
    if unknown:
        raise ValidationError(f"unknown sampling fields: {', '.join(sorted(unknown))}", "params")
    for name in ("stop", "stop_token_ids"):
        if name in params and not isinstance(params[name], list):
            raise ValidationError(f"{name} must be a list", name)
    prompt = data.get("prompt")
    ids = data.get("prompt_token_ids")
    if prompt is not None and not isinstance(prompt, str):
        raise ValidationError("prompt must be a string", "prompt")
    if ids is not None and (not isinstance(ids, list) or not all(_is_int(t) for t in ids)):
        raise ValidationError("prompt_token_ids must be a list of integers", "prompt_token_ids")
    if "request_id" in data and not isinstance(data["request_id"], str):
        raise ValidationError("request_id must be a string", "request_id")
    if data.get("adapter") is not None and not isinstance(data["adapter"], str):
        raise ValidationError("adapter must be a string", "adapter")
    # Other fields (add_special_tokens, resume_*) go through as sent; the engine checks them
    # when it prepares the prompt.
    extra = {k: v for k, v in data.items() if k not in ("params", "prompt", "prompt_token_ids")}
    return GenerateRequest(prompt=prompt, prompt_token_ids=ids, params=SamplingParams(**params), **extra)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def delta_to_dict(delta: Delta) -> dict[str, Any]:
    out = dataclasses.asdict(delta)
    if delta.logprobs is None:
        out.pop("logprobs")
    return out


def delta_from_dict(data: dict[str, Any]) -> Delta:
    """A delta read back from a replica we talk to (trusted; a bad one raises KeyError/TypeError)."""
    fields = {k: v for k, v in data.items() if k in _DELTA_FIELDS}
    logprobs = fields.pop("logprobs", None)
    if logprobs is not None:
        logprobs = [
            TokenLogprob(
                token_id=lp["token_id"],
                token=lp["token"],
                logprob=lp["logprob"],
                top=[(t[0], t[1], t[2]) for t in lp["top"]],
            )
            for lp in logprobs
        ]
    return Delta(**fields, logprobs=logprobs)


def stats_to_dict(stats: EngineStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)


def stats_from_dict(data: dict[str, Any]) -> EngineStats:
    """Missing fields read as zero, so a worker one version apart still reports its load."""
    empty = dataclasses.asdict(EngineStats.empty())
    return EngineStats(**{name: data.get(name, empty[name]) for name in _STATS_FIELDS})
