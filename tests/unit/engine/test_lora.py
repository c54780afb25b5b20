"""LoRA adapters: what PEFT computes with the adapter, row by row in a batch that mixes them."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams, ValidationError
from stratus.engine.lora import AdapterError
from tests.checkpoints import build_lora_adapter, load_hf_model

pytestmark = pytest.mark.timeout(300)

PROMPTS = ["Beautiful is better than ugly.", "Explicit is better than implicit. Simple is", "hello"]


@pytest.fixture(scope="module")
def adapters(llama_dir, tmp_path_factory):
    """Three adapters of the session's llama checkpoint: every target, rank-stabilized with
    another rank, and attention-only (q and v: the fused q/k/v projection partly adapted)."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "all": build_lora_adapter(llama_dir, root / "all", seed=1),
        "rs": build_lora_adapter(llama_dir, root / "rs", r=4, alpha=8, use_rslora=True, seed=2),
        "qv": build_lora_adapter(llama_dir, root / "qv", targets=("q_proj", "v_proj"), seed=3, std=0.1),
    }


def generate(engine: EngineCore, prompts: list[list[int]], adapters: list[str | None], max_tokens=24):
    """Run every (prompt, adapter) pair in one batch; the tokens of each, in order."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    for i, (ids, adapter) in enumerate(zip(prompts, adapters)):
        engine.add_request(
            GenerateRequest(prompt_token_ids=ids, params=params, request_id=str(i), adapter=adapter)
        )
    out: dict[str, list[int]] = {}
    while engine.has_work():
        for delta in engine.step():
            out.setdefault(delta.request_id, []).extend(delta.token_ids)
    assert not engine.take_failures()
    return [out[str(i)] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def engine(llama_dir, adapters):
    core = EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=16))
    for name, path in adapters.items():
        core.load_adapter(name, path)
    return core


@pytest.mark.parametrize("name", ["all", "rs", "qv"])
def test_outputs_equal_transformers_with_peft(name, engine, adapters, llama_dir):
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(load_hf_model(llama_dir), str(adapters[name])).eval()
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    for ids, ours in zip(prompts, engine.prompt_logits(prompts, name)):
        with torch.no_grad():
            ref = peft_model(torch.tensor([ids])).logits[0]
            with peft_model.disable_adapter():
                base = peft_model(torch.tensor([ids])).logits[0]
        assert (ref - base).abs().max() > 0.1  # the adapter changes the answer
        assert (ref - ours).abs().max().item() <= 1e-4

    merged = peft_model.merge_and_unload()  # the adapter folded into the weights, as deployed

    got = generate(engine, prompts, [name] * len(prompts), max_tokens=24)
    for ids, tokens in zip(prompts, got):
        with torch.no_grad():
            ref = merged.generate(
                torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=2
            )
        assert tokens == ref[0, len(ids) :].tolist()


@pytest.mark.parametrize("native", [True, False])  # rows of an adapter together, or apart
def test_a_batch_mixing_adapters_gives_each_row_its_answer_alone(native, llama_dir, adapters):
    engine = EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=16, native_kernels=native))
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    prompt = engine.tokenizer.encode(PROMPTS[1])
    names = [None, "all", "rs", "qv"]
    alone = [generate(engine, [prompt], [name], max_tokens=12)[0] for name in names]
    assert len({tuple(t) for t in alone}) == len(names)  # four different answers to one prompt
    together = generate(engine, [prompt] * 8, names * 2, max_tokens=12)  # one adapter's rows apart
    assert together == alone * 2


def test_the_prefix_cache_is_not_shared_between_adapters(engine):
    prompt = engine.tokenizer.encode(" ".join(PROMPTS) * 2)
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    cached = {}
    for i, adapter in enumerate(["all", "qv", "all", None]):
        engine.add_request(
            GenerateRequest(prompt_token_ids=prompt, params=params, request_id=f"c{i}", adapter=adapter)
        )
        while engine.has_work():
            for delta in engine.step():
                cached[delta.request_id] = delta.cached_tokens
    assert cached["c1"] == 0 < cached["c2"]  # "qv" reused nothing of "all"; "all" again did
    assert cached["c3"] == 0 or cached["c3"] < cached["c2"]  # the base model reused nothing of theirs


def test_unknown_adapter_is_refused(engine):
    with pytest.raises(ValidationError, match="not loaded"):
        engine.add_request(GenerateRequest(prompt_token_ids=[1, 2], adapter="nope"))


def test_lru_of_resident_adapters_serves_more_adapters_than_it_holds(llama_dir, adapters):
    core = EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=16, max_loras=2))
    for name, path in adapters.items():
        core.load_adapter(name, path)
    assert len(core.adapters.resident) == 2
    prompt = core.tokenizer.encode(PROMPTS[0])
    names = ["all", "rs", "qv"]
    alone = [generate(core, [prompt], [name])[0] for name in names]
    loads = core.adapters.loads
    assert generate(core, [prompt] * 3, names) == alone  # one waited for a resident slot
    assert core.adapters.loads > loads  # evicted adapters were read again
    assert len(core.adapters.resident) <= 2


def _edit_config(path, **changes):
    file = path / "adapter_config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),
        ({"peft_type": "IA3"}, "only LORA"),
        ({"bias": "all"}, "bias"),
        ({"r": 16}, "r=16"),
    ],
)
def test_unsupported_adapters_are_refused_naming_why(change, message, engine, adapters, tmp_path):
    import shutil

    bad = shutil.copytree(adapters["qv"], tmp_path / "bad")
    _edit_config(bad, **change)
    with pytest.raises(AdapterError, match=message):
        engine.load_adapter("bad", bad)
    assert "bad" not in engine.adapters


def test_an_adapter_of_another_model_is_refused(engine, adapters, tmp_path):
    import shutil

    bad = shutil.copytree(adapters["qv"], tmp_path / "other")
    tensors = load_file(bad / "adapter_model.safetensors")
    tensors = {k: torch.zeros(v.shape[0], 64) if "lora_A" in k else v for k, v in tensors.items()}
    save_file(tensors, bad / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="another model"):
        engine.load_adapter("other", bad)
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(8, 128)
    save_file(tensors, bad / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="lm_head"):
        engine.load_adapter("other", bad)


def test_unloading_refuses_new_requests(llama_dir, adapters):
    core = EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=16))
    core.load_adapter("qv", adapters["qv"])
    assert core.unload_adapter("qv") and not core.unload_adapter("qv")
    with pytest.raises(ValidationError, match="not loaded"):
        core.add_request(GenerateRequest(prompt_token_ids=[1, 2], adapter="qv"))
