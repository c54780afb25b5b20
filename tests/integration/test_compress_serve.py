"""Round trip: quantize a checkpoint, serve it through the API, get what the engine computes."""

from pathlib import Path

import httpx
import openai
import pytest

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.compress import CompressSpec, compress
from stratus.config import Settings
from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from stratus.security.bootstrap import bootstrap
from stratus.security.stage import IdentityStage
from tests import issued
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(600)
READY_S = 300  # two engine processes loading on a busy 2-core machine took over 120 s
PROMPT = "Beautiful is better than"
DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def engine_completion(path, prompt: str, max_tokens: int) -> str:
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16))
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
    with LiveServer(create_app(settings, identity=IdentityStage(access))) as server:
        server.wait_ready(READY_S)
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


@pytest.mark.skipif(
    not (DEMO / "config.json").is_file(),
    reason="models/demo is absent: train it with `make demo-model` (scripts/train_demo_model.py)",
)
def test_quantized_demo_model_serves_through_the_openai_client(tmp_path, admin_key):
    """The demo checkpoint (a trained model, not random weights) as int8 and int4, served and
    called with the official client (AWQ checkpoints of it are measured in
    tests/unit/compress/test_compress_demo.py; they load the same way)."""
    paths = {
        "demo-int8": (tmp_path / "int8", CompressSpec("int8")),
        "demo-int4": (tmp_path / "int4", CompressSpec("int4")),
    }
    for path, spec in paths.values():
        compress(DEMO, path, spec)
    settings = Settings(
        models={name: str(path) for name, (path, _) in paths.items()},
        data_dir=str(issued.data_dir_of(tmp_path / "gateway-data")),
    )
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    prompt = "It is a truth universally acknowledged, that"
    with LiveServer(create_app(settings, identity=IdentityStage(access))) as server:
        server.wait_ready(READY_S)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=admin_key, max_retries=0)
        assert {m.id for m in client.models.list()} == set(paths)
        for name, (path, _) in paths.items():
            done = client.completions.create(
                model=name, prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
            )
            assert done.usage.completion_tokens == 12
            assert done.choices[0].text == engine_completion(path, prompt, 12)
            chat = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Who is Emma?"}], max_tokens=8
            )
            assert chat.choices[0].message.content
