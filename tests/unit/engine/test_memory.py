"""The KV pool sized from the memory available (engine/memory.py), and models that cannot fit."""

from __future__ import annotations

import pytest
import torch

from stratus.engine import EngineConfig, EngineCore
from stratus.engine.config import ModelConfig
from stratus.engine.memory import (
    InsufficientMemory,
    available_bytes,
    check_weights_fit,
    kv_bytes_per_token,
    plan_pool,
    weight_bytes_estimate,
    zeroed,
)

CPU = torch.device("cpu")
MiB = 2**20


@pytest.fixture(scope="module")
def model(llama_dir):
    return ModelConfig.from_dir(llama_dir)


def plan(model, config, available, context=128):
    return plan_pool("m", model, config, torch.float32, CPU, context, available)


def test_the_memory_available_is_read():
    free = available_bytes(CPU)
    assert free is not None and free > 0


def test_the_pool_is_a_fraction_of_the_memory_available(model):
    per_block = kv_bytes_per_token(model, torch.float32) * 16
    available = 40 * per_block * 4  # 0.25 of it holds 40 blocks
    pool = plan(model, EngineConfig(max_num_seqs=64), available)
    assert pool.num_blocks == 40
    assert pool.how.startswith("0.25 of")
    pool = plan(model, EngineConfig(max_num_seqs=64, kv_cache_memory_fraction=0.5), available)
    assert pool.num_blocks == 80


def test_the_pool_never_outgrows_what_max_num_seqs_full_sequences_use(model):
    pool = plan(model, EngineConfig(max_num_seqs=3), 100 * 2**30, context=100)
    assert pool.num_blocks == 3 * 7  # 100 tokens: 7 blocks of 16, for each of 3 sequences
    assert "--max-num-seqs 3" in pool.how


def test_an_explicit_pool_is_taken_as_given(model):
    assert plan(model, EngineConfig(num_kv_blocks=5), 1).num_blocks == 5
    per_block = kv_bytes_per_token(model, torch.float32) * 16
    blocks = plan(model, EngineConfig(kv_cache_memory_mb=8), 1).num_blocks
    assert blocks == 8 * MiB // per_block


def test_a_pool_that_cannot_hold_a_short_context_fails_with_the_numbers_and_the_flags(model):
    per_block = kv_bytes_per_token(model, torch.float32) * 16
    with pytest.raises(InsufficientMemory) as info:
        plan(model, EngineConfig(), 4 * per_block)  # 0.25 of it: one block, 16 tokens
    text = str(info.value)
    assert "context of 128 tokens needs" in text and "0.25 of the" in text
    for flag in ("--kv-cache-memory-fraction", "--dtype bfloat16", "--max-model-len", "--method int8|int4"):
        assert flag in text


def test_weights_larger_than_the_memory_available_fail_with_the_numbers(model, llama_dir):
    needed = weight_bytes_estimate(llama_dir, model, torch.float32)
    assert needed == model.num_parameters() * 4
    assert weight_bytes_estimate(llama_dir, model, torch.bfloat16) == needed // 2
    check_weights_fit("m", needed, needed, torch.float32)  # exactly enough
    check_weights_fit("m", needed, None, torch.float32)  # unknown: not refused
    with pytest.raises(
        InsufficientMemory, match=r"weights need about [\d.]+ MiB in float32, but only [\d.]+ MiB"
    ):
        check_weights_fit("m", needed, needed // 2, torch.float32)


def test_an_engine_sizes_its_pool_from_the_memory_available(llama_dir, caplog):
    with caplog.at_level("INFO", logger="stratus.engine"):
        core = EngineCore(llama_dir, EngineConfig(max_num_seqs=4, max_model_len=64))
    assert core.runner.num_blocks == 4 * 4  # the cap: far less than 0.25 of any machine's memory
    assert "of" in core.runner.pool.how and "MiB available" in caplog.text


def test_an_engine_whose_pool_cannot_fit_refuses_to_start(llama_dir):
    with pytest.raises(InsufficientMemory, match="needs"):
        EngineCore(llama_dir, EngineConfig(kv_cache_memory_fraction=1e-12))


def test_the_cpu_pool_is_zero_and_taken_from_the_os_only_when_written():
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    before = rss()
    pool = zeroed((2, 64 * 1024, 1024), torch.float32, CPU)  # 512 MiB
    assert rss() - before < 64 * MiB
    assert pool[1, -1].abs().sum().item() == 0 and pool[0, 0].abs().sum().item() == 0
    pool[0, :256] = 1.0  # 1 MiB written
    assert rss() - before < 64 * MiB
    assert pool[0, :512].sum().item() == 256 * 1024
