"""GGUF files (engine/gguf.py): every tensor type stratus reads gives the model transformers'
GGUF loader gives, q/k permutation undone; what it cannot read is refused by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from stratus.engine import CheckpointError, EngineConfig, EngineCore, ModelConfig
from stratus.engine import gguf as engine_gguf
from stratus.engine.gguf_blocks import weight_bytes
from stratus.engine.quant import Int4Linear, Int8BlockLinear, QuantEmbedding, QuantLinear
from stratus.engine.tokenizer import Tokenizer
from tests.checkpoints import build_checkpoint, load_hf_model
from tests.gguf_files import write_gguf

pytest.importorskip("gguf")
pytestmark = pytest.mark.timeout(300)

PROMPT = "Beautiful is better than ugly. Explicit is"
# hidden 256 and intermediate 512: K-quant blocks are 256 wide
SHAPE = dict(hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, init_std=0.1)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("llama"), "llama", **SHAPE)


def hf_from_gguf(path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def logits(engine: EngineCore, ids: list[int]) -> torch.Tensor:
    return engine.prompt_logits([ids])[0]


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"])
def test_each_tensor_type_matches_transformers_gguf_loader(kind, llama_dir, tmp_path):
    """Dequantized at load (every type with --gguf-dequantize), stratus computes in float32 what
    transformers computes from the same file."""
    pytest.importorskip("accelerate")
    path = write_gguf(llama_dir, tmp_path / f"tiny-{kind}.gguf", kind)
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16, gguf_dequantize=True))
    assert not any(isinstance(m, QuantLinear) for m in engine.runner.model.modules())
    ids = engine.tokenizer.encode(PROMPT)
    ours = logits(engine, ids)
    with torch.no_grad():
        ref = hf_from_gguf(path)(torch.tensor([ids])).logits[0]
    scale = ref.abs().max().item()
    assert scale > 0.5  # the comparison means something
    assert (ours - ref).abs().max().item() <= 1e-4 * max(1.0, scale)
    if kind in ("F32", "F16", "BF16", "Q8_0"):  # close to the checkpoint it was written from
        with torch.no_grad():
            original = load_hf_model(llama_dir)(torch.tensor([ids])).logits[0]
        tolerance = {"F32": 1e-4, "F16": 2e-2, "BF16": 1e-1, "Q8_0": 5e-1}[kind]  # logits up to ~4
        assert (ours - original).abs().max().item() <= tolerance
        cosine = torch.nn.functional.cosine_similarity(ours.flatten(), original.flatten(), dim=0)
        assert cosine.item() > 0.995


# Native layers multiply with bfloat16 activations and scales on the CPU (quant.py), so logits
# differ from transformers' float32 ones by bfloat16 rounding over the layers: measured 1.6-2.8%
# of the largest logit here, cosine 0.9998-0.9999; the bounds are 5% and 0.9995 (a random
# model's top tokens are near ties, so its argmax is no test; the real model's test checks it).
NATIVE_RTOL = 5e-2


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("tied", [False, True])
def test_native_types_are_served_quantized_and_match_transformers(kind, tied, tmp_path):
    pytest.importorskip("accelerate")
    checkpoint = build_checkpoint(tmp_path / "llama", "llama", tie_word_embeddings=tied, **SHAPE)
    path = write_gguf(checkpoint, tmp_path / f"tiny-{kind}.gguf", kind)
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16))
    model = engine.runner.model
    expected = Int8BlockLinear if kind == "Q8_0" else Int4Linear
    linears = [model.lm_head] + [
        m for layer in model.layers for m in (*layer.self_attn.children(), *layer.mlp.children())
    ]
    assert all(type(m) is expected for m in linears)
    assert isinstance(model.embed_tokens, QuantEmbedding)
    assert (model.embed_tokens.table is model.lm_head) == tied
    assert not any(isinstance(p, torch.nn.Parameter) and p.dim() == 2 for p in model.parameters())
    # what the memory check counts (gguf_blocks.weight_bytes) is what the layers hold
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    held -= sum(t.numel() * t.element_size() for t in model.rope.buffers())  # computed, not weights
    held += sum(
        t.numel() * t.element_size()
        for m in model.modules()
        if isinstance(m, QuantLinear)
        for t in (m._kernel_weight, m._kernel_scale_zeros)
        if t is not None
    )
    estimate = weight_bytes(path, engine.model_config, torch.float32)
    assert abs(estimate - held) <= 0.1 * held, (estimate, held)
    ids = engine.tokenizer.encode(PROMPT)
    with torch.no_grad():
        ref = hf_from_gguf(path)(torch.tensor([ids])).logits[0]
    ours = logits(engine, ids)
    scale = ref.abs().max().item()
    assert scale > 0.5
    assert (ours - ref).abs().max().item() <= NATIVE_RTOL * scale
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0)
    assert cosine.item() > 0.9995


def test_a_gguf_file_is_its_checkpoint(llama_dir, tmp_path):
    """Config, tokenizer and template from the metadata agree with the directory it came from,
    and the float32 file computes what the directory computes."""
    path = write_gguf(llama_dir, tmp_path / "tiny.gguf", "F32")
    assert engine_gguf.is_gguf(path) and not engine_gguf.is_gguf(llama_dir)
    ours, theirs = ModelConfig.from_dir(path), ModelConfig.from_dir(llama_dir)
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.rope_theta == theirs.rope_theta and not ours.tie_word_embeddings
    tok, ref = Tokenizer(path), Tokenizer(llama_dir)
    for text in ("hello world", "Special cases <|user|> 0123", "  spaces\n\nnewlines ünïcödé"):
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(tok.encode(text)) == ref.decode(ref.encode(text))
    chat = [{"role": "user", "content": "hello"}]
    assert tok.encode_chat(chat) == ref.encode_chat(chat)
    assert tok.special_ids == ref.special_ids and tok.eos_token == ref.eos_token == "</s>"
    engine, base = (EngineCore(p, EngineConfig(kv_cache_memory_mb=16)) for p in (path, llama_dir))
    ids = ref.encode(PROMPT)
    assert torch.allclose(logits(engine, ids), logits(base, ids), atol=1e-5)
    files = engine_gguf.checkpoint_files(path)  # what a worker serving the file sends the gateway
    assert set(files) == {"config.json", "tokenizer.json", "tokenizer_config.json"}
    assert json.loads(files["config.json"])["architectures"] == ["LlamaForCausalLM"]


def test_qwen2_biases_and_tied_embeddings(tmp_path):
    pytest.importorskip("accelerate")
    checkpoint = build_checkpoint(tmp_path / "qwen2", "qwen2", tie_word_embeddings=True, **SHAPE)
    path = write_gguf(checkpoint, tmp_path / "qwen2.gguf", "Q8_0")
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16, gguf_dequantize=True))
    config = engine.model_config
    assert config.family == "qwen2" and config.attention_bias and config.tie_word_embeddings
    ids = engine.tokenizer.encode(PROMPT)
    with torch.no_grad():
        ref = hf_from_gguf(path)(torch.tensor([ids])).logits[0]
    assert (logits(engine, ids) - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def _rewrite(src, dst, **changes) -> None:
    """A copy of a GGUF file with some metadata values changed (strings or one tensor's type)."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), changes.get("arch", arch))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = changes.get(name, field.contents())
        if name.startswith(f"{arch}.") and "arch" in changes:
            name = changes["arch"] + name[len(arch) :]
        writer.add_key_value(
            name, value, field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None
        )
    for tensor in reader.tensors:
        if tensor.name == changes.get("q5_0_tensor"):
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            data = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q5_0)
            writer.add_tensor(tensor.name, data, raw_dtype=gguf.GGMLQuantizationType.Q5_0)
        else:
            writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_what_stratus_cannot_read_is_refused_by_name(llama_dir, tmp_path):
    good = write_gguf(llama_dir, tmp_path / "good.gguf", "F32")

    bad = tmp_path / "arch.gguf"
    _rewrite(good, bad, arch="gemma2")
    with pytest.raises(CheckpointError, match="general.architecture 'gemma2' not supported"):
        ModelConfig.from_dir(bad)

    bad = tmp_path / "spm.gguf"
    _rewrite(good, bad, **{"tokenizer.ggml.model": "t5"})
    with pytest.raises(CheckpointError, match="tokenizer.ggml.model 't5' not supported"):
        Tokenizer(bad)

    bad = tmp_path / "q5_0.gguf"
    _rewrite(good, bad, q5_0_tensor="blk.0.ffn_up.weight")
    with pytest.raises(CheckpointError, match=r"tensor blk.0.ffn_up.weight is Q5_0; stratus reads"):
        EngineCore(bad, EngineConfig(kv_cache_memory_mb=16))

    truncated = tmp_path / "truncated.gguf"
    shutil.copyfile(good, truncated)
    with truncated.open("r+b") as handle:
        handle.truncate(64)
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        ModelConfig.from_dir(truncated)


SP_TEXTS = [
    "Hello world",
    "Beautiful is better than ugly.",
    "  two leading spaces, tabs\tand\nnewlines\n\n",
    "unicode the vocabulary cannot spell: 日本語 ünïcödé 🙂 (byte fallback)",
    "digits 3.14159 and <|user|> special <|end|> tokens",
    "",
]


@pytest.mark.parametrize("merges", [True, False])
def test_sentencepiece_vocabulary_matches_transformers(merges, llama_dir, tmp_path):
    """A "llama" (SentencePiece BPE) vocabulary, with its merges or only its scores: the same ids
    as transformers' GGUF tokenizer, and text back from them."""
    import transformers

    path = write_gguf(llama_dir, tmp_path / "sp.gguf", "F32", vocabulary="llama", merges=merges)
    ours = Tokenizer(path)
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert ref("hi").input_ids[0] == ours.encode("hi")[0] == 1  # <s>: tokenizer.ggml.add_bos_token
    pieces = ref.convert_ids_to_tokens(ref("日本語").input_ids)
    assert any(p.startswith("<0x") for p in pieces)  # the test exercises byte fallback
    for text in SP_TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text).input_ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert ours.eos_token == ref.eos_token == "</s>"
    chat = [{"role": "user", "content": "hello there"}]
    assert ours.encode_chat(chat) == list(
        ref.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
    )


def test_llama31_rope_factors_give_the_checkpoints_logits(tmp_path):
    """Llama 3.1's rope scaling reaches a GGUF file as rope_freqs.weight (a divisor per rotary
    frequency): the file computes what the checkpoint it came from computes."""
    checkpoint = build_checkpoint(tmp_path / "llama3", "llama3", **SHAPE)
    path = write_gguf(checkpoint, tmp_path / "llama3.gguf", "F32")
    config = ModelConfig.from_dir(path)
    assert config.rope_scaling["rope_type"] == "factors"
    factors = config.rope_scaling["factors"]
    assert len(factors) == config.head_dim // 2 and min(factors) == 1.0 and max(factors) == 8.0
    engine, base = (EngineCore(p, EngineConfig(kv_cache_memory_mb=16)) for p in (path, checkpoint))
    ids = engine.tokenizer.encode(PROMPT * 8)  # past the original 256 positions' short waves
    ours = logits(engine, ids)
    with torch.no_grad():
        original = load_hf_model(checkpoint)(torch.tensor([ids])).logits[0]
    assert (ours - original).abs().max().item() <= 1e-4 * max(1.0, original.abs().max().item())
    assert torch.allclose(ours, logits(base, ids), atol=1e-5)
