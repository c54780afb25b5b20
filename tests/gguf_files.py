"""Small GGUF files written the way llama.cpp's converter writes them, for tests.

    write_gguf(build_checkpoint(tmp, "llama"), tmp / "m.gguf", "Q4_0")

The checkpoint's weights become GGUF tensors (q/k rows permuted for llama, as
convert_hf_to_gguf.py does), its byte-level tokenizer and chat template become metadata. The
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


def write_gguf(checkpoint: Path, out: Path, weight_type: str = "F32", *, seed: int = 0) -> Path:
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
    vocab = tokenizer["model"]["vocab"]
    for added in tokenizer["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {a["content"] for a in tokenizer["added_tokens"] if a["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    merges = tokenizer["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(vocab[tok_config["bos_token"]])
    writer.add_eos_token_id(vocab[tok_config["eos_token"]])
    writer.add_add_bos_token(True)
    writer.add_chat_template(tok_config["chat_template"])

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
