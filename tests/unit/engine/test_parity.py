"""stratus computes what `transformers` computes, on the same checkpoint."""

import pytest
import torch

from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from tests.checkpoints import build_checkpoint, load_hf_model

PROMPTS = [
    "Beautiful is better than ugly.",
    "Explicit is better than implicit. Simple is better than complex. Complex is better than",
    "hello",
]


def run_to_completion(engine: EngineCore) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_work():
        for delta in engine.step():
            tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
    return tokens


@pytest.mark.parametrize("arch", ["llama", "llama3", "mistral", "qwen2", "qwen3", "phi3", "gemma2"])
def test_logits_and_greedy_match_transformers(arch, arch_dirs):
    path = arch_dirs[arch]
    hf = load_hf_model(path)
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16))
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths, one batch

    ours = engine.prompt_logits(prompts)
    for ids, logits in zip(prompts, ours):
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0]
        assert ref.abs().max() > 1.0  # the comparison means something
        assert (ref - logits).abs().max().item() <= 1e-4

    for i, ids in enumerate(prompts):
        params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
        engine.add_request(GenerateRequest(prompt_token_ids=ids, params=params, request_id=str(i)))
    got = run_to_completion(engine)  # all three decode together in one batch
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=2
            )
        assert got[str(i)] == ref[0, len(ids) :].tolist()


def test_loaded_config_reflects_checkpoint(arch_dirs):
    engine = EngineCore(arch_dirs["llama3"], EngineConfig(kv_cache_memory_mb=16))
    assert engine.model_config.rope_scaling["rope_type"] == "llama3"
    assert engine.model_config.num_kv_heads < engine.model_config.num_heads  # GQA
    qwen = EngineCore(arch_dirs["qwen2"], EngineConfig(kv_cache_memory_mb=16))
    assert qwen.model_config.attention_bias and qwen.model_config.tie_word_embeddings
    assert qwen.runner.model.lm_head.weight is qwen.runner.model.embed_tokens.weight
    qwen3 = EngineCore(arch_dirs["qwen3"], EngineConfig(kv_cache_memory_mb=16)).model_config
    assert qwen3.qk_norm and not qwen3.attention_bias and qwen3.head_dim == 2 * 128 // 4
    phi3 = EngineCore(arch_dirs["phi3"], EngineConfig(kv_cache_memory_mb=16)).model_config
    assert phi3.fused_checkpoint and phi3.family == "phi3"
    gemma = EngineCore(arch_dirs["gemma2"], EngineConfig(kv_cache_memory_mb=16))
    config = gemma.model_config
    assert config.layer_windows == (8, None) and config.sliding_window is None
    assert config.attn_logit_softcap == 50.0 and config.final_logit_softcap == 30.0
    assert config.sandwich_norms and config.norm_offset == 1.0 and config.hidden_act == "gelu_pytorch_tanh"
    assert not gemma.runner.native_decode  # the C kernel does not soft-cap


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints(dtype, tmp_path):
    """A checkpoint stored in half precision loads both as stored and upcast to float32."""
    path = build_checkpoint(tmp_path, "llama", hidden_size=128, init_std=0.1, dtype=dtype)
    hf = load_hf_model(path, dtype=torch.float32)
    ids = [0, 5, 9, 42, 100, 7]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    exact = EngineCore(path, EngineConfig(kv_cache_memory_mb=16, dtype="float32")).prompt_logits([ids])[0]
    assert (ref - exact).abs().max().item() <= 1e-4
    name = "bfloat16" if dtype == torch.bfloat16 else "float16"
    half = EngineCore(path, EngineConfig(kv_cache_memory_mb=16, dtype=name))
    assert half.runner.kv_caches[0][0].dtype == dtype
    # Half precision rounds every activation; 0.1 absolute on logits of magnitude ~5.
    assert (ref - half.prompt_logits([ids])[0]).abs().max().item() <= 0.1
