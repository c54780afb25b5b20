"""Embeddings in OpenAI's shape: the request body, its inputs as token ids, the vectors as a response.

`input` is a string, a list of strings, a list of token ids or a list of such lists (at most
MAX_INPUTS items, MAX_TOTAL_TOKENS tokens in all). Texts get the tokenizer's special tokens, as
transformers and sentence-transformers encode them. An input longer than the context window is a
400 naming `input`: nothing is truncated. `dimensions` keeps the first that many values of each
vector and scales it back to unit length when the model normalises (as OpenAI's v3 models do);
`encoding_format: "base64"` sends each vector as little-endian float32 bytes, base64-encoded.
"""

from __future__ import annotations

import base64
import sys
from typing import TYPE_CHECKING, Annotated, Literal, cast

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from stratus.api.prompts import check_text_fits, check_token_ids, off_loop_if_long
from stratus.request.errors import APIError

if TYPE_CHECKING:
    from stratus.cluster.replica_set import ReplicaSet
    from stratus.engine import Engine

MAX_INPUTS = 2048  # as OpenAI
MAX_TOTAL_TOKENS = 300_000  # as OpenAI: all inputs of one request together

Text = Annotated[str, Field(min_length=1)]
Ids = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
EmbeddingInput = (
    Text
    | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
    | Ids
    | Annotated[list[Ids], Field(min_length=1, max_length=MAX_INPUTS)]
)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: Annotated[str, Field(min_length=1)]
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], int):
            return [value]  # type: ignore[list-item]  # one input as token ids
        return value  # type: ignore[return-value]


class EmbeddingData(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def check_dimensions(dimensions: int | None, hidden_size: int) -> None:
    if dimensions is not None and dimensions > hidden_size:
        raise APIError(
            400,
            f"dimensions={dimensions} is more than this model's {hidden_size}; ask for "
            f"1 to {hidden_size}, or leave dimensions out.",
            param="dimensions",
        )


async def embedding_inputs(engine: ReplicaSet, body: EmbeddingRequest) -> list[list[int]]:
    """Each input's token ids; a 400 naming `input` for one that cannot be embedded whole."""
    items: list[str | list[int]] = list(body.inputs())
    texts = [t for t in items if isinstance(t, str)]
    checked = cast("Engine", engine)  # the checks read what a ReplicaSet has too
    for text in texts:
        check_text_fits(checked, len(text), "input")
    chars = sum(len(t) for t in texts)
    encode = engine.tokenizer.encode
    encoded = iter(await off_loop_if_long(chars, lambda: [encode(t, True) for t in texts]))
    prompts = []
    window = engine.max_model_len
    for i, item in enumerate(items):
        if isinstance(item, str):
            ids = next(encoded)
        else:
            check_token_ids(checked, item, "input")
            ids = list(item)
        if not ids:
            raise APIError(400, f"Input {i} has no tokens; send some text.", param="input")
        if len(ids) > window:
            raise APIError(
                400,
                f"This model's maximum context length is {window} tokens, but input {i} is "
                f"{len(ids)} tokens; shorten it (inputs are never truncated).",
                param="input",
                code="context_length_exceeded",
            )
        prompts.append(ids)
    total = sum(len(ids) for ids in prompts)
    if total > MAX_TOTAL_TOKENS:
        raise APIError(
            400,
            f"The inputs are {total} tokens in all; one request may have at most "
            f"{MAX_TOTAL_TOKENS}. Split them over several requests.",
            param="input",
        )
    return prompts


def embedding_response(
    vectors: np.ndarray, body: EmbeddingRequest, prompt_tokens: int, normalized: bool
) -> Response:
    """The response body (orjson writes float32 rows as JSON numbers directly)."""
    if body.dimensions is not None and body.dimensions < vectors.shape[1]:
        vectors = vectors[:, : body.dimensions]
        if normalized:  # back to unit length, as OpenAI's shortened embeddings are
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, np.float32(1e-12))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if body.encoding_format == "base64":
        little = vectors if sys.byteorder == "little" else vectors.byteswap()
        rows: list = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        rows = list(vectors)
    out = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": body.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
