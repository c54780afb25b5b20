"""What `stratus serve` serves without --model: SmolLM2 from the cache (fetched once), or the demo
model when asked for or when SmolLM2 cannot be had, saying why."""

from __future__ import annotations

import logging

from stratus.cli.serve import SMOLLM2_NAME, default_models
from stratus.config import Settings, load_settings
from tests.smollm2 import smollm2_gguf


def test_the_default_is_smollm2_unless_set(monkeypatch):
    assert Settings().default_model == "smollm2"
    assert load_settings(env={"STRATUS_DEFAULT_MODEL": "demo"}).default_model == "demo"


def test_demo_asked_for_fetches_nothing(tmp_path):
    settings = Settings(default_model="demo", cache_dir=str(tmp_path / "cache"))
    assert default_models(settings) == {}
    assert not (tmp_path / "cache").exists()


def test_smollm2_comes_from_the_cache():
    path = smollm2_gguf()  # the tests' cache, laid out as stratus's own
    cache = path.parent.parent
    assert default_models(Settings(cache_dir=str(cache))) == {SMOLLM2_NAME: str(path)}


def test_when_smollm2_cannot_be_had_the_demo_model_is_served_and_the_log_says_why(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="stratus"):
        assert default_models(Settings(cache_dir=str(blocker / "cache"))) == {}
    assert "serving the demo model instead of SmolLM2-135M-Instruct" in caplog.text
    assert "cannot create the cache" in caplog.text
