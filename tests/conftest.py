"""Fixtures shared by every test directory. Add yours here; keep each one general.

- `tiny_checkpoint`: a small random Llama checkpoint (tokenizer and chat template included),
  built once per session.
- `api_server`: one real gateway serving that checkpoint as model "tiny" on a loopback port,
  started once per session (integration and e2e tests share it; its counters are cumulative).
- `base_url`, `http`: the server's URL and an httpx client for it.
"""

from __future__ import annotations

import httpx
import pytest

from tests.checkpoints import build_checkpoint
from tests.live_server import LiveServer

TINY_MODEL = "tiny"
TINY_CONTEXT = 512  # small, so "prompt too long" is cheap and fuzzed requests stay short


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    # init_std 0.1 gives peaked logits, so greedy outputs do not hinge on rounding noise.
    return build_checkpoint(
        tmp_path_factory.mktemp("tiny-llama"),
        "llama",
        hidden_size=128,
        init_std=0.1,
        max_position_embeddings=TINY_CONTEXT,
    )


@pytest.fixture(scope="session")
def api_server(tiny_checkpoint):
    from stratus.api import create_app
    from stratus.config import Settings

    settings = Settings(
        models={TINY_MODEL: str(tiny_checkpoint)}, max_body_bytes=256 * 1024, engine_isolation="process"
    )
    server = LiveServer(create_app(settings)).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_engine(api_server):
    """The engine behind `api_server` (for apps that share it, or in-process comparisons)."""
    return api_server.app.state.stratus.registry.models[TINY_MODEL].engine


@pytest.fixture(scope="session")
def base_url(api_server) -> str:
    return api_server.url


@pytest.fixture
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client
