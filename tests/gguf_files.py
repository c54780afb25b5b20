"""Small GGUF files written the way llama.cpp's converter writes them, for tests.

    write_gguf(build_checkpoint(tmp, "llama"), tmp / "m.gguf", "Q4_0")

The checkpoint's weights become GGUF tensors (q/k rows permuted for llama, as
convert_hf_to_gguf.py does), its byte-level tokenizer and chat template become metadata; with
`vocabulary="llama"` the tokenizer is instead a SentencePiece-style BPE vocabulary trained here
(`sentencepiece_vocabulary`: "▁" for spaces, byte-fallback tokens <0x00>..<0xFF>, scores), as
llama.cpp writes a Llama 2 or Mistral vocabulary, with or without its merges. The
matmul weights and the token embedding take `weight_type`; norms (and biases) stay F32. K-quant
types (Q4_K, Q5_K, Q6_K) have no quantizer in the `gguf` package: their blocks are random bytes
with small block scales, so a file of those types holds random weights (compare it against
transformers reading the same file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

K_SCALE_OFFSETS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # f16 d (and dmin) in a block
GGUF_ARCH = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_factors(theta: float, head_dim: int, scaling: dict) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: Llama 3.1's rope factors."""
    import math

    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _names(layers: int) -> dict[str, str]:
    out = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for n in range(layers):
        for hf, gg in parts.items():
            for suffix in ("weight", "bias"):
                out[f"model.layers.{n}.{hf}.{suffix}"] = f"blk.{n}.{gg}.{suffix}"
    return out


def _tensor(values: np.ndarray, kind: str, rng: np.random.Generator):
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    if kind == "F32":
        return values.astype(np.float32), None
    if kind in K_SCALE_OFFSETS:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = values.shape
        data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
        for offset in K_SCALE_OFFSETS[kind]:
            data[:, :, offset : offset + 2] = np.frombuffer(np.float16(3e-4).tobytes(), dtype=np.uint8)
        return data.reshape(rows, -1), qtype
    return gguf.quants.quantize(values.astype(np.float32), qtype), qtype


SP_SPECIALS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
SP_TYPES = {"<unk>": 2, "<0x": 6}  # token types: 1 normal, 2 unknown, 3 control, 6 byte


def sentencepiece_vocabulary(size: int) -> dict:
    """A SentencePiece-style BPE vocabulary of exactly `size` tokens, trained on the checkpoints'
    text with the `tokenizers` library: ids, scores (-rank, as SentencePiece scores a BPE
    piece), token types and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from tests.checkpoints import TOKENIZER_TEXT

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    # split per word while training (SentencePiece's pieces do not cross words); served unsplit
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=size, special_tokens=SP_SPECIALS + byte_tokens, show_progress=False
    )
    tok.train_from_iterator([TOKENIZER_TEXT + " café naïve 日本"] * 4, trainer=trainer)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    tokens += [f"<unused{i}>" for i in range(size - len(tokens))]  # as some vocabularies pad
    model = __import__("json").loads(tok.to_str())["model"]
    return {
        "tokens": tokens,
        "scores": [-float(i) for i in range(len(tokens))],
        "types": [
            3 if t in SP_SPECIALS[1:] else next((v for k, v in SP_TYPES.items() if t.startswith(k)), 1)
            for t in tokens
        ],
        "merges": [m if isinstance(m, str) else " ".join(m) for m in model["merges"]],
    }


def write_gguf(
    checkpoint: Path,
    out: Path,
    weight_type: str = "F32",
    *,
    seed: int = 0,
    vocabulary: str = "gpt2",
    merges: bool = True,
) -> Path:
    import gguf

    config = json.loads((checkpoint / "config.json").read_text())
    arch = GGUF_ARCH[config["architectures"][0]]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(rope))
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_vocab_size(config["vocab_size"])

    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    tok_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    if vocabulary == "llama":
        sp = sentencepiece_vocabulary(config["vocab_size"])
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(sp["tokens"])
        writer.add_token_scores(sp["scores"])
        writer.add_token_types(sp["types"])
        if merges:
            writer.add_token_merges(sp["merges"])
        writer.add_bos_token_id(sp["tokens"].index("<s>"))
        writer.add_eos_token_id(sp["tokens"].index("</s>"))
        writer.add_unk_token_id(sp["tokens"].index("<unk>"))
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
    else:
        vocab = tokenizer["model"]["vocab"]
        for added in tokenizer["added_tokens"]:
            vocab[added["content"]] = added["id"]
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
        special = {a["content"] for a in tokenizer["added_tokens"] if a["special"]}
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t in special else 1 for t in tokens])
        merges_ = tokenizer["model"]["merges"]
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges_])
        writer.add_bos_token_id(vocab[tok_config["bos_token"]])
        writer.add_eos_token_id(vocab[tok_config["eos_token"]])
        writer.add_add_bos_token(True)
    writer.add_chat_template(tok_config["chat_template"])

    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if scaling.get("rope_type") == "llama3":
        head_dim = config["hidden_size"] // heads
        writer.add_tensor("rope_freqs.weight", _llama3_factors(float(rope), head_dim, scaling))

    rng = np.random.default_rng(seed)
    names = _names(config["num_hidden_layers"])
    for name, values in sorted(load_file(str(checkpoint / "model.safetensors")).items()):
        if config.get("tie_word_embeddings") and name == "lm_head.weight":
            continue
        values = values.astype(np.float32)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            values = _permute(values, heads if "q_proj" in name else kv_heads)
        kind = weight_type if values.ndim == 2 else "F32"
        data, qtype = _tensor(values, kind, rng)
        writer.add_tensor(names[name], data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
