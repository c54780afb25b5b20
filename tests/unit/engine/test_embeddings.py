"""Embeddings: stratus pools the hidden states `transformers` computes, as the checkpoint declares.

The reference is transformers' own base model (AutoModel: last_hidden_state, after the final
norm) on the same token ids, pooled the way sentence-transformers does it. Tolerance (float32):
every vector within 1e-4 of the reference element-wise, cosine above 0.9999.
"""

import pytest
import torch

from stratus.engine import CheckpointError, EngineConfig, EngineCore
from stratus.engine.pooling import Pooling, pool, read_pooling
from tests.checkpoints import add_sentence_transformers_pooling, build_checkpoint, hf_embeddings

pytestmark = pytest.mark.timeout(300)

TEXTS = [
    "Beautiful is better than ugly.",
    "Explicit is better than implicit. Simple is better than complex. Complex is better than",
    "hello",
    "Readability counts. " * 12,
]
ATOL = 1e-4
MIN_COSINE = 0.9999


def reference(path, prompts: list[list[int]], pooling: Pooling) -> torch.Tensor:
    return hf_embeddings(path, prompts, pooling.mode, pooling.normalize)


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() < ATOL
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    assert cos.min().item() > MIN_COSINE


@pytest.mark.parametrize(
    ("arch", "st_mode", "normalize", "expected"),
    [
        ("llama", "lasttoken", True, Pooling("last", True)),
        ("qwen2", "mean_tokens", True, Pooling("mean", True)),
        ("mistral", "lasttoken", False, Pooling("last", False)),
        ("llama", "cls_token", True, Pooling("cls", True)),
    ],
)
def test_embeddings_match_transformers(tmp_path, arch, st_mode, normalize, expected):
    path = build_checkpoint(tmp_path, arch, hidden_size=128, init_std=0.1)
    add_sentence_transformers_pooling(path, st_mode, normalize)
    assert read_pooling(path) == expected
    # A small per-step budget, so the prompts go through several forward passes of a few each.
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16, max_num_batched_tokens=64))
    prompts = [engine.tokenizer.encode(t) for t in TEXTS]
    ours = engine.embed(prompts, expected)
    ref = reference(path, prompts, expected)
    assert ref.abs().max() > 0.05  # the comparison means something
    assert_close(ours, ref)
    assert engine.blocks.num_used == 0  # the blocks went back, nothing was cached
    # The same prompts one per call give the same vectors as batched (batching changes nothing).
    alone = torch.cat([engine.embed([ids], expected) for ids in prompts])
    assert (alone - ours).abs().max().item() < 1e-5


def test_default_pooling_is_last_token_normalised(tmp_path):
    path = build_checkpoint(tmp_path, "llama")
    assert read_pooling(path) == Pooling("last", True)


def test_pooling_config_that_cannot_be_honoured_is_refused(tmp_path):
    path = build_checkpoint(tmp_path, "llama")
    add_sentence_transformers_pooling(path, "max_tokens")
    with pytest.raises(CheckpointError, match="pooling_mode_max_tokens"):
        read_pooling(path)
    (path / "modules.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="modules.json"):
        read_pooling(path)


def test_pool_modes_on_known_values():
    hidden = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]])
    assert pool(hidden, [2, 1], Pooling("last", False)).tolist() == [[3.0, 4.0], [0.0, 2.0]]
    assert pool(hidden, [2, 1], Pooling("mean", False)).tolist() == [[2.0, 2.0], [0.0, 2.0]]
    assert pool(hidden, [2, 1], Pooling("cls", False)).tolist() == [[1.0, 0.0], [0.0, 2.0]]
    unit = pool(hidden, [2, 1], Pooling("last", True))
    assert torch.allclose(unit, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="pooling must be one of"):
        Pooling("max")


def test_inputs_outside_the_window_are_refused(tmp_path):
    from stratus.engine import ValidationError

    path = build_checkpoint(tmp_path, "llama", max_position_embeddings=64)
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16))
    assert engine.embed([[5] * 64], Pooling()).shape == (1, 64)  # the whole window is allowed
    for bad in ([5] * 65, []):
        with pytest.raises(ValidationError) as exc:
            engine.embed([[5, 6], bad], Pooling())
        assert exc.value.param == "input"
