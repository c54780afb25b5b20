"""Per-model parallel layouts (--model-parallel, STRATUS_MODEL_PARALLEL, stratus.toml) and the
global --tensor-parallel-size / --pipeline-parallel-size engine settings."""

import pytest

from stratus.config import ConfigError, load_settings


def write(tmp_path, text):
    path = tmp_path / "stratus.toml"
    path.write_text(text)
    return path


def test_model_parallel_per_model_from_each_source(tmp_path):
    s = load_settings({"model_parallel": "big=2x1,huge=2x2,wide=4"}, env={}, config_file=write(tmp_path, ""))
    assert s.parallel_layouts() == {"big": (2, 1), "huge": (2, 2), "wide": (4, 1)}
    toml = 'model_parallel = "big=1x2"\ntensor_parallel_size = 2\n'
    s = load_settings({}, env={}, config_file=write(tmp_path, toml))
    assert s.parallel_layouts() == {"big": (1, 2)} and s.engine.tensor_parallel_size == 2
    env = {"STRATUS_PIPELINE_PARALLEL_SIZE": "3", "STRATUS_MODEL_PARALLEL": "x=2x2"}
    s = load_settings({}, env=env, config_file=write(tmp_path, ""))
    assert s.engine.pipeline_parallel_size == 3 and s.parallel_layouts() == {"x": (2, 2)}


@pytest.mark.parametrize("spec", ["2x2", "big=two", "big=0x1", "big=2x2x2"])
def test_bad_model_parallel_is_refused_naming_the_setting(tmp_path, spec):
    with pytest.raises(ConfigError, match="model_parallel"):
        load_settings({"model_parallel": spec}, env={}, config_file=write(tmp_path, ""))


def test_bad_parallel_size_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        load_settings({"tensor_parallel_size": 0}, env={}, config_file=write(tmp_path, ""))


def test_the_registry_gives_a_named_model_its_layout():
    from stratus.api.registry import ModelRegistry
    from stratus.engine import EngineConfig

    registry = ModelRegistry(
        {"a": "/m/a", "big": "/m/big"}, engine_config=EngineConfig(max_num_seqs=8), parallel={"big": (2, 2)}
    )
    big = registry._engine_config("big")
    assert (big.tensor_parallel_size, big.pipeline_parallel_size, big.max_num_seqs) == (2, 2, 8)
    assert registry._engine_config("a").world_size == 1
