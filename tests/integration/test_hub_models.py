"""`--model tiny=org/repo[@revision]` serves a checkpoint from the Hugging Face cache, offline.

A tiny checkpoint is laid out as huggingface_hub lays out a download (models--org--repo/
snapshots/<commit>/..., refs/<branch>) in a temporary HF_HOME, with HF_HUB_OFFLINE=1: never the
network. The settings go through the same parsing and start-up as `stratus serve`.
"""

import shutil

import httpx
import pytest

from tests.checkpoints import build_checkpoint
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)

COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    ckpt = build_checkpoint(tmp_path / "built", "llama", hidden_size=64, init_std=0.1)
    repo = tmp_path / "hf" / "hub" / "models--org--tiny"
    shutil.copytree(ckpt, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo / "snapshots" / COMMIT


@pytest.mark.parametrize("spec", ["org/tiny", f"org/tiny@{COMMIT}", "org/tiny@main"])
def test_a_hugging_face_name_resolves_to_the_cached_snapshot_and_serves(hub_cache, tmp_path, spec):
    from stratus.cli.serve import build_server
    from stratus.config import load_settings, parse_model_spec

    name, path = parse_model_spec(f"tiny={spec}")
    settings = load_settings(
        {"models": {name: path}, "port": 0, "auth": False, "engine_isolation": "thread"},
        config_file=None,
        env={"STRATUS_DATA_DIR": str(tmp_path / "data")},
    )
    assert settings.models == {"tiny": spec}  # resolved when the server is built, not when parsed
    server, sock = build_server(settings)
    sock.close()
    assert settings.models == {"tiny": str(hub_cache)}
    with LiveServer(server.config.app) as live:
        live.wait_ready()
        r = httpx.post(
            live.url + "/v1/completions",
            json={"model": "tiny", "prompt": "hello world", "max_tokens": 4, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny" and body["usage"]["completion_tokens"] >= 1
