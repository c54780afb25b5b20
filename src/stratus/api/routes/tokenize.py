"""POST /tokenize and POST /detokenize (as vLLM offers them), for one model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from stratus.api.deps import GatewayDep, Parsed, parsed
from stratus.api.prompts import check_token_ids, engine_error, plain_messages, render_chat
from stratus.api.routes.common import errors, json_body
from stratus.api.schemas import DetokenizeRequest, TokenizeRequest
from stratus.api.schemas_out import DetokenizeResponse, TokenizeResponse
from stratus.api.streaming import JSONBody
from stratus.engine.types import ValidationError

router = APIRouter(tags=["tokenizer"])


@router.post(
    "/tokenize",
    summary="Token ids of a prompt, or of chat messages rendered with the chat template",
    response_model=TokenizeResponse,
    responses=errors(400, 404, 413, 500, 503),
    openapi_extra=json_body(TokenizeRequest),
)
async def tokenize(
    gw: GatewayDep, parsed_body: Annotated[Parsed[TokenizeRequest], parsed(TokenizeRequest)]
) -> JSONBody:
    body = parsed_body.body
    engine = await gw.route(body.model, generating=False)
    tok = engine.tokenizer
    if body.messages is not None and not body.add_special_tokens:  # the template carries BOS
        try:  # as a chat request is tokenized: control tokens only where the template put them
            ids = tok.encode_chat(plain_messages(body.messages), body.add_generation_prompt)
        except ValidationError as exc:
            raise engine_error(exc) from None
    elif body.messages is not None:
        ids = tok.encode(
            render_chat(engine, body.messages, body.add_generation_prompt), add_special_tokens=True
        )
    else:
        special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = tok.encode(body.prompt or "", add_special_tokens=special)
    out = {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = [tok.id_to_token(t) for t in ids]
    return JSONBody(out)


@router.post(
    "/detokenize",
    summary="Text of a list of token ids",
    response_model=DetokenizeResponse,
    responses=errors(400, 404, 413, 500, 503),
    openapi_extra=json_body(DetokenizeRequest),
)
async def detokenize(
    gw: GatewayDep, parsed_body: Annotated[Parsed[DetokenizeRequest], parsed(DetokenizeRequest)]
) -> JSONBody:
    body = parsed_body.body
    engine = await gw.route(body.model, generating=False)
    check_token_ids(engine, body.tokens, "tokens")
    return JSONBody({"prompt": engine.tokenizer.decode(body.tokens)})
