"""Review finding: the response cache keys on the model name, and a LoRA adapter is the model
BASE:NAME; replacing the adapter behind that name (POST again) or removing it left the old
adapter's answers in the cache, served as answers of whatever was loaded under the name next."""

from __future__ import annotations

import httpx
import pytest

from stratus.api import create_app
from stratus.config import Settings
from stratus.engine import Engine, EngineConfig
from stratus.request.stage import Stage
from stratus.security.identity import Principal
from tests.checkpoints import build_lora_adapter
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(180)

BODY = {"model": "m:x", "prompt": "Beautiful is better than", "max_tokens": 8, "temperature": 0}


class Admin(Stage):
    async def identify(self, ctx):
        ctx.principal = Principal(user="root", roles=frozenset({"admin"}), models=None)


def test_an_adapter_replaced_or_removed_leaves_no_cached_answer(tiny_checkpoint, tmp_path):
    dirs = {
        seed: build_lora_adapter(tiny_checkpoint, tmp_path / f"a{seed}", seed=seed, std=0.2)
        for seed in (11, 12)
    }
    engine = Engine(tiny_checkpoint, EngineConfig(kv_cache_memory_mb=16), isolation="thread")
    settings = Settings(response_cache_size=16, data_dir=str(tmp_path / "data"))
    app = create_app(settings, engines={"m": engine}, identity=Admin())
    with LiveServer(app) as live:
        live.wait_ready()
        with httpx.Client(base_url=live.url, timeout=60) as c:

            def load(seed: int) -> None:
                r = c.post("/admin/models/m/adapters", json={"name": "x", "path": str(dirs[seed])})
                assert r.status_code in (200, 201), r.text

            def text() -> str:
                r = c.post("/v1/completions", json=BODY)
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["text"]

            load(11)
            first = text()
            assert text() == first  # cached (and the same anyway)
            load(12)  # replaced: the same name, another adapter
            second = text()
            assert second != first
            assert c.delete("/admin/models/m/adapters/x").status_code == 200
            load(11)
            assert text() == first
