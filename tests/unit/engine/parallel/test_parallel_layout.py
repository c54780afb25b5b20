"""How a replica is split over ranks (engine/parallel/layout.py): no process is started here."""

import dataclasses

import pytest

from stratus.engine.config import EngineConfig, ModelConfig
from stratus.engine.parallel.layout import LayoutError, local_config, plan, shard, split_layers


def config(**overrides) -> ModelConfig:
    base = ModelConfig(
        architecture="LlamaForCausalLM",
        family="llama",
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        head_dim=8,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=None,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attention_bias=False,
        sliding_window=None,
        torch_dtype="float32",
        bos_token_id=0,
    )
    return dataclasses.replace(base, **overrides)


def test_heads_that_do_not_divide_are_refused_with_sizes_that_would():
    with pytest.raises(LayoutError) as err:
        plan(config(num_heads=6, num_kv_heads=6, intermediate_size=96), 4, 1)
    message = str(err.value)
    assert "tensor_parallel_size=4" in message and "6 attention heads" in message
    assert "[2, 3, 6]" in message  # what does divide this model


def test_kv_heads_split_when_there_are_enough():
    parts = [shard(config(num_kv_heads=4), 2, r) for r in range(2)]
    assert [p.heads for p in parts] == [(0, 4), (4, 8)]
    assert [p.kv_heads for p in parts] == [(0, 2), (2, 4)]
    assert [p.intermediate for p in parts] == [(0, 64), (64, 128)]


def test_kv_heads_replicated_when_fewer_than_ranks():
    c = config(num_heads=8, num_kv_heads=2)
    parts = [shard(c, 4, r) for r in range(4)]
    assert [p.kv_heads for p in parts] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    group = c.num_heads // c.num_kv_heads
    for p in parts:  # every query head of a rank reads the KV head that rank holds
        assert {h // group for h in range(*p.heads)} == {p.kv_heads[0]}
    with pytest.raises(LayoutError, match="3 KV heads"):
        plan(config(num_heads=12, num_kv_heads=3, intermediate_size=96), 4, 1)


def test_vocabulary_is_padded_to_equal_shards():
    parts = [shard(config(vocab_size=1001), 2, r) for r in range(2)]
    assert [p.vocab for p in parts] == [(0, 501), (501, 1002)]
    local = local_config(config(vocab_size=1001), parts[1], (0, 4))
    assert (local.vocab_size, local.num_heads, local.num_kv_heads, local.intermediate_size) == (501, 4, 1, 64)


def test_pipeline_stages_cover_every_layer_once_balanced_by_parameters():
    c = config(num_layers=30, vocab_size=50_000, hidden_size=64)
    stages = split_layers(c, 3)
    assert stages[0][0] == 0 and stages[-1][1] == 30
    assert all(a[1] == b[0] for a, b in zip(stages, stages[1:]))
    sizes = [end - start for start, end in stages]
    # the embedding and the head weigh several layers here: the end stages get fewer layers
    assert sizes[1] > sizes[0] and sizes[1] > sizes[2]
    assert split_layers(config(num_layers=4), 2) == ((0, 2), (2, 4))


def test_more_stages_than_layers_and_quantized_checkpoints_are_refused():
    with pytest.raises(LayoutError, match="at most 4 stages"):
        plan(config(), 1, 5)
    with pytest.raises(LayoutError, match="int8 checkpoint cannot be split"):
        plan(config(quantization={"method": "int8"}), 2, 1)
    with pytest.raises(LayoutError, match="FutureForCausalLM model cannot be split"):
        plan(config(architecture="FutureForCausalLM", family="future"), 2, 1)
    assert plan(config(architecture="FutureForCausalLM", family="future"), 1, 1).world_size == 1


@pytest.mark.parametrize(
    "field, value",
    [("tensor_parallel_size", 0), ("pipeline_parallel_size", 1.5), ("parallel_timeout_s", 0)],
)
def test_engine_config_checks_parallel_settings(field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})
    assert EngineConfig(tensor_parallel_size=2, pipeline_parallel_size=3).world_size == 6
