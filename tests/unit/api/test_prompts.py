"""Long prompts: refused by length before tokenizing when they cannot fit, and tokenized off the
event loop when they are long, so one client's 4 MB prompt does not stall every other client."""

import asyncio
import threading
from types import SimpleNamespace

import pytest

from stratus.api.prompts import OFF_LOOP_CHARS, chat_prompt_ids, completion_prompt_ids
from stratus.api.schemas import ChatCompletionRequest, CompletionRequest
from stratus.engine.tokenizer import Tokenizer
from stratus.request.errors import APIError


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return Tokenizer(tiny_checkpoint)


def engine(tokenizer, max_model_len=512):
    return SimpleNamespace(tokenizer=tokenizer, max_model_len=max_model_len, model_config=None)


def test_a_prompt_that_cannot_fit_is_refused_without_tokenizing(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: pytest.fail("tokenized"))
    huge = "word " * 800_000  # 4 MB
    with pytest.raises(APIError) as err:
        asyncio.run(completion_prompt_ids(engine(tokenizer), CompletionRequest(model="m", prompt=huge)))
    assert err.value.status == 400 and err.value.param == "prompt"
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": huge}])
    with pytest.raises(APIError):
        asyncio.run(chat_prompt_ids(engine(tokenizer), chat.messages))


def test_long_prompts_are_tokenized_off_the_event_loop(tokenizer, monkeypatch):
    threads = []
    real = tokenizer.encode

    def encode(text, add_special_tokens=True):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(text, add_special_tokens)

    monkeypatch.setattr(tokenizer, "encode", encode)
    big = engine(tokenizer, max_model_len=1_000_000)
    long_text = "x" * (OFF_LOOP_CHARS + 1)
    asyncio.run(completion_prompt_ids(big, CompletionRequest(model="m", prompt=["short", long_text])))
    assert threads == [True, False]  # the short one inline, the long one in a worker thread
    assert tokenizer.max_token_chars >= 1
