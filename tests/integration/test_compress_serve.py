"""Round trip: quantize a checkpoint, serve it through the API, get what the engine computes."""

import httpx
import pytest

from stratus.api import create_app
from stratus.api.auth import AuthHooks, build_access
from stratus.compress import CompressSpec, compress
from stratus.config import Settings
from stratus.engine import EngineConfig, GenerateRequest, LLMEngine, SamplingParams
from stratus.security.bootstrap import bootstrap
from tests import issued
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)
PROMPT = "Beautiful is better than"


def engine_completion(path, prompt: str, max_tokens: int) -> str:
    engine = LLMEngine(path, EngineConfig(kv_cache_memory_mb=16))
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    engine.add_request(GenerateRequest(prompt=prompt, params=params, request_id="r"))
    ids = []
    while engine.has_work():
        for delta in engine.step():
            ids.extend(delta.token_ids)
    return engine.tokenizer.decode(ids)


def test_quantized_checkpoints_serve_through_the_api(tiny_checkpoint, tmp_path, admin_key, auth_headers):
    paths = {}
    for method in ("int8", "int4"):
        compress(tiny_checkpoint, tmp_path / method, CompressSpec(method))
        paths[f"tiny-{method}"] = tmp_path / method
    # engine isolation "process": each quantized model loads in its own engine process, as
    # `stratus serve` runs it
    settings = Settings(
        models={name: str(p) for name, p in paths.items()},
        data_dir=str(issued.data_dir_of(tmp_path / "gateway-data")),
    )
    access = build_access(settings)  # access control on, as `stratus serve` runs
    bootstrap(access.store, admin_key)
    with LiveServer(create_app(settings, hooks=AuthHooks(access))) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60, headers=auth_headers) as http:
            listed = {m["id"] for m in http.get("/v1/models").json()["data"]}
            assert listed == set(paths)
            for name, path in paths.items():
                body = {
                    "model": name,
                    "prompt": PROMPT,
                    "max_tokens": 8,
                    "temperature": 0,
                    "ignore_eos": True,
                }
                r = http.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                choice = r.json()["choices"][0]
                assert r.json()["usage"]["completion_tokens"] == 8
                assert choice["text"] == engine_completion(path, PROMPT, 8)
                chat = http.post(
                    "/v1/chat/completions",
                    json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                )
                assert chat.status_code == 200, chat.text
