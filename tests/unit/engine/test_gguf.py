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
    pytest.importorskip("accelerate")
    path = write_gguf(llama_dir, tmp_path / f"tiny-{kind}.gguf", kind)
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16))
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
    engine = EngineCore(path, EngineConfig(kv_cache_memory_mb=16))
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
    _rewrite(good, bad, **{"tokenizer.ggml.model": "llama"})
    with pytest.raises(CheckpointError, match="tokenizer.ggml.model 'llama' not supported"):
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
