"""`stratus serve` with no --model, as a newcomer runs it: SmolLM2-135M-Instruct from the cache,
its whole 8,192-token context served from a KV pool sized by the memory available, and a
sensible answer through the openai client."""

from __future__ import annotations

import openai
import pytest

from tests import issued
from tests.live_server import ServeProcess
from tests.smollm2 import smollm2_gguf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_serve_without_a_model_answers_with_smollm2(tmp_path):
    cache = smollm2_gguf().parent.parent  # the tests' cache, laid out as stratus's own
    env = {"STRATUS_DEFAULT_MODEL": "smollm2", "STRATUS_CACHE_DIR": str(cache)}
    server = ServeProcess("--data-dir", str(tmp_path / "data"), "--no-auth", env=env)
    try:
        server.wait_ready(480)
        assert "models: smollm2 (" in server.output
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=120)
        assert [m.id for m in client.models.list()] == ["smollm2"]
        question = issued.record_prompt("What is the capital of France?")
        answer = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": question}], max_tokens=20, temperature=0
        )
        assert "Paris" in answer.choices[0].message.content
    finally:
        server.kill()
    # one line at start: the pool sized from the memory available, the whole context served
    line = next(x for x in server.lines if "KV pool" in x)
    assert "MiB available" in line and "context 8192 tokens" in line, line
