"""GGUF files (llama.cpp's format) served like checkpoint directories.

A GGUF file holds what a Hugging Face directory spreads over several files: the model's shape
(metadata `llama.block_count`, `llama.embedding_length`, ...), the tokenizer (vocabulary,
merges, token types, special token ids), the chat template and the weights, many of them
quantized. This module reads one with the `gguf` package (llama.cpp's own Python reader) and
answers in the engine's terms, so that the rest of the engine never sees the format:

    config_dict(path)          # what config.json would say -> ModelConfig.from_dict
    tokenizer_parts(path)      # a `tokenizers` Tokenizer and what tokenizer_config.json would say
    checkpoint_files(path)     # config.json, tokenizer.json, tokenizer_config.json as text
    read_tensors(path, config) # every tensor under its Hugging Face name, dequantized when read

Weights: Q8_0, Q4_0 and Q4_1 tensors (NATIVE) are read as the buffers of quantized layers
(`GGUFTensor.blocks`, installed by gguf_blocks.py); every other supported type (DEQUANTIZED),
and those too with `gguf_dequantize`, is dequantized at load with `gguf`'s own dequantization
to the serving dtype, one tensor at a time; the file is memory-mapped, so the peak is the model
plus the largest tensor. llama.cpp's converter permutes the rows of a
Llama model's q and k projections (its rotary embedding pairs neighbouring channels, not the two
halves of a head); they are permuted back here, as transformers' GGUF loader does.

Tokenizer: byte-level BPE ("gpt2") vocabularies are rebuilt as transformers builds them from a
GGUF (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`), so token ids agree with it;
so are SentencePiece BPE ("llama") vocabularies, as transformers' LlamaTokenizer.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from .types import CheckpointError

# general.architecture -> the Hugging Face architecture it is served as. Mistral models are
# written by llama.cpp's converter as "llama" (its GGUF metadata has no sliding window).
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
PERMUTED_QK = {"llama"}  # architectures whose q/k rows llama.cpp's converter permuted
ROPE_FACTORS = "rope_freqs.weight"  # Llama 3.1's rotary frequency factors: config, not weights
DEQUANTIZED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")
NATIVE = ("Q8_0", "Q4_0", "Q4_1")  # also served as quantized layers: gguf_blocks.py
BLOCK = 32  # weights per block of those types

# GGUF tensor names -> Hugging Face ones (the engine's loader fuses q/k/v and gate/up itself)
TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
PER_LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# tokenizer.ggml.pre -> the split a byte-level vocabulary's merges were learned with; the
# others use GPT-2's (ByteLevel's own regex). The same table as transformers'.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    "tekken": _TEKKEN_SPLIT,
}
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def is_gguf(path: str | Path) -> bool:
    """A file (not a directory) named *.gguf, or starting with GGUF's magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with path.open("rb") as handle:
        return handle.read(4) == b"GGUF"


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any]  # name -> gguf.ReaderTensor (its data memory-mapped)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def open_gguf(path: str | Path) -> GGUFFile:
    """The file's metadata and tensor index; parsed once per process while the file is unchanged
    (`gguf`'s reader takes seconds on a 50k-token vocabulary)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _open(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _open(path: Path, mtime_ns: int, size: int) -> GGUFFile:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct errors, IndexError ...
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from exc
    metadata = {
        name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")
    }
    return GGUFFile(path, metadata, {t.name: t for t in reader.tensors})


def release() -> None:
    """Forget parsed files (and unmap their tensors) once the weights are loaded."""
    _open.cache_clear()


def _architecture(file: GGUFFile) -> str:
    arch = file.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{file.path}: general.architecture {arch!r} not supported; expected one of "
            f"{sorted(ARCHITECTURES)} (Mistral models are written as 'llama')"
        )
    return arch


def config_dict(path: str | Path) -> dict[str, Any]:
    """What a Hugging Face config.json would say about the model in this file."""
    file = open_gguf(path)
    arch = _architecture(file)

    def need(key: str) -> Any:
        name = f"{arch}.{key}"
        if name not in file.metadata:
            raise CheckpointError(f"{file.path}: metadata {name} missing")
        return file.metadata[name]

    embedding = file.tensors.get("token_embd.weight")
    if embedding is None:
        raise CheckpointError(f"{file.path}: tensor token_embd.weight missing")
    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(file.get(f"{arch}.attention.key_length") or hidden // heads)
    rotary = file.get(f"{arch}.rope.dimension_count")
    if rotary is not None and int(rotary) != head_dim:
        raise CheckpointError(
            f"{file.path}: rope.dimension_count={rotary} differs from the head size {head_dim} "
            "(partial rotary embeddings are not supported)"
        )
    scaling_type = file.get(f"{arch}.rope.scaling.type")
    rope_scaling = None
    if scaling_type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(need("rope.scaling.factor"))}
    elif scaling_type not in (None, "none"):
        raise CheckpointError(f"{file.path}: rope scaling {scaling_type!r} not supported; expected linear")
    factors = file.tensors.get(ROPE_FACTORS)
    if factors is not None:
        # Llama 3.1-style scaling, as llama.cpp's converter writes it: each rotary frequency is
        # divided by its factor (the llama3 rule's outcome, tabulated)
        if rope_scaling is not None:
            raise CheckpointError(f"{file.path}: both {ROPE_FACTORS} and rope.scaling.type {scaling_type!r}")
        values = [float(v) for v in GGUFTensor(factors).to(torch.float32).reshape(-1)]
        if len(values) != head_dim // 2:
            raise CheckpointError(
                f"{file.path}: {ROPE_FACTORS} has {len(values)} values, expected {head_dim // 2} "
                "(one per rotary frequency)"
            )
        rope_scaling = {"rope_type": "factors", "factors": values}
    types = {str(t.tensor_type.name) for t in file.tensors.values()}
    dtype = (
        "float32" if types == {"F32"} else "float16" if "F16" in types and "BF16" not in types else "bfloat16"
    )
    eos = [file.get(f"tokenizer.ggml.{key}") for key in ("eos_token_id", "eot_token_id")]
    return {
        "architectures": [ARCHITECTURES[arch]],
        "vocab_size": int(embedding.shape[1]),  # GGUF shapes are innermost first
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(file.get(f"{arch}.attention.head_count_kv") or heads),
        "head_dim": head_dim,
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(file.get(f"{arch}.rope.freq_base") or 10000.0),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": int(need("context_length")),
        "tie_word_embeddings": "output.weight" not in file.tensors,
        "torch_dtype": dtype,  # the serving dtype on a GPU with --dtype auto
        "bos_token_id": file.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": sorted({int(e) for e in eos if e is not None}),  # llama.cpp stops at EOT too
    }


# -- tokenizer ---------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _byte_level(file: GGUFFile, tokens: list[str]) -> tuple[HFTokenizer, dict[str, int], set[str] | None]:
    """A "gpt2" vocabulary: byte-level BPE, as transformers' GPT2Tokenizer builds it."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges") or []]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    split = PRE_TOKENIZER_SPLITS.get(file.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    return tok, vocab, alphabet


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies when the file lists none: every split of
    a token into two tokens, best score first (transformers' `generate_merges`, so ids agree)."""
    found: list[tuple[str, str, float]] = []
    for token, score in scores.items():
        pairs = [(token[:i], token[i:], score) for i in range(1, len(token))]
        pairs = [p for p in pairs if p[0] in vocab and p[1] in vocab]
        found.extend(sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]])))
    found.sort(key=lambda p: (p[2], len(p[0]), len(p[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _sentencepiece(file: GGUFFile, tokens: list[str]) -> tuple[HFTokenizer, dict[str, int], None]:
    """A "llama" vocabulary: SentencePiece BPE as transformers' LlamaTokenizer builds it: "▁" for
    a space (and one before the text), byte-fallback tokens <0x00>..<0xFF> for what the
    vocabulary cannot spell, merges from the file or else from the tokens' scores."""
    vocab = {t: i for i, t in enumerate(tokens)}
    if file.get("tokenizer.ggml.merges"):
        merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges")]
    else:
        scores = list(file.get("tokenizer.ggml.scores") or [])
        if len(scores) != len(tokens):
            raise CheckpointError(
                f"{file.path}: a SentencePiece vocabulary needs tokenizer.ggml.merges or one "
                f"tokenizer.ggml.scores value per token ({len(scores)} for {len(tokens)} tokens)"
            )
        merges = merges_from_scores(vocab, dict(zip(tokens, scores)))
    unknown = file.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unknown)] if unknown is not None and 0 <= int(unknown) < len(tokens) else None
    model = models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, unk_token=unk)
    tok = HFTokenizer(model)
    # llama.cpp adds the leading space unless the file says not to (tokenizer.ggml.add_space_prefix)
    prefix = bool(file.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    return tok, vocab, None


def tokenizer_parts(path: str | Path) -> tuple[HFTokenizer, dict[str, Any]]:
    """The tokenizer the file describes, and what its tokenizer_config.json would say."""
    file = open_gguf(path)
    kind = file.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise CheckpointError(
            f"{file.path}: tokenizer.ggml.model {kind!r} not supported; stratus reads byte-level BPE "
            "('gpt2') and SentencePiece BPE ('llama') vocabularies from GGUF files"
        )
    tokens: list[str] = list(file.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise CheckpointError(f"{file.path}: metadata tokenizer.ggml.tokens missing")
    tok, vocab, alphabet = _byte_level(file, tokens) if kind == "gpt2" else _sentencepiece(file, tokens)
    types = list(file.get("tokenizer.ggml.token_type") or [])
    # Control tokens are special (in a byte-level vocabulary, a control token spelled outside the
    # byte alphabet is a llama.cpp mislabel, skipped as transformers does); user-defined ones are
    # matched whole.
    tok.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t, kind_ in zip(tokens, types)
            if kind_ == CONTROL and (alphabet is None or set(t) <= alphabet)
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, kind_ in zip(tokens, types)
            if kind_ == USER_DEFINED and t in vocab
        ]
    )

    def token(key: str) -> str | None:
        index = file.get(f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    config: dict[str, Any] = {
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        # llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise
        "add_bos_token": bool(file.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        "add_eos_token": bool(file.get("tokenizer.ggml.add_eos_token", False)),
        "chat_template": file.get("tokenizer.chat_template"),
    }
    single, special = ["$A"], []
    for flag, name in (("add_bos_token", "bos_token"), ("add_eos_token", "eos_token")):
        text = config[name]
        if config[flag] and text is not None:
            special.append((text, vocab.get(text, tokens.index(text))))
            single = [text, *single] if name == "bos_token" else [*single, text]
    pair = [*single, *[x if x != "$A" else "$B" for x in single]]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    return tok, config


def checkpoint_files(path: str | Path) -> dict[str, str]:
    """The small files of the checkpoint directory this file stands for (what a worker sends the
    gateway, and what the replicas of a model must agree on)."""
    tok, config = tokenizer_parts(path)
    return {
        "config.json": json.dumps(config_dict(path), indent=2, sort_keys=True),
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True),
    }


# -- weights -----------------------------------------------------------------------------------


class GGUFTensor:
    """One tensor of the file under its Hugging Face name and shape; dequantized when read, or
    (a NATIVE type) read as its quantized layer's buffers."""

    def __init__(self, tensor: Any, unpermute_heads: int | None = None):
        self.tensor = tensor
        self.shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists innermost first
        self.dtype = torch.float32
        self.kind = str(tensor.tensor_type.name)
        self.unpermute_heads = unpermute_heads

    def to(self, dtype: torch.dtype) -> torch.Tensor:
        from gguf import GGMLQuantizationType, quants

        if self.tensor.tensor_type == GGMLQuantizationType.F16:
            values = np.asarray(self.tensor.data).view(np.float16)  # straight to the serving dtype
        else:
            values = quants.dequantize(self.tensor.data, self.tensor.tensor_type)
        out = torch.from_numpy(np.array(values, copy=True)).reshape(self.shape).to(dtype)
        return self._unpermute(out)

    def blocks(self) -> dict[str, torch.Tensor]:
        """The quantized layer's buffers, rows in the Hugging Face order (block_tensors)."""
        rows, cols = self.shape
        parts = block_tensors(self.tensor.data, self.kind, rows, cols)
        return {key: self._unpermute(value) for key, value in parts.items()}

    def _unpermute(self, out: torch.Tensor) -> torch.Tensor:
        """Rows of a q or k projection: llama.cpp interleaved each head's two halves of rows,
        (2, d) -> (d, 2); undo it (a row moves whole, with its blocks)."""
        if not self.unpermute_heads:
            return out
        heads = self.unpermute_heads
        shape = out.shape
        out = out.reshape(heads, shape[0] // heads // 2, 2, *shape[1:])
        return out.transpose(1, 2).reshape(shape)


def block_tensors(data: Any, kind: str, rows: int, cols: int) -> dict[str, torch.Tensor]:
    """A [rows, cols] tensor of a NATIVE type (the file's bytes, [rows, bytes per row]) as the
    buffers of its quantized layer: Int4Linear's qweight/scales/zeros or Int8BlockLinear's
    qweight/scales (the mapping: gguf_blocks.py)."""
    if kind not in NATIVE:
        raise ValueError(f"{kind} is not served natively; expected one of {NATIVE}")
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(rows, cols // BLOCK, -1)

    def half(start: int) -> torch.Tensor:  # the fp16 at `start` of every block, as float32
        values = np.ascontiguousarray(blocks[..., start : start + 2]).view(np.float16)
        return torch.from_numpy(values.reshape(rows, -1).astype(np.float32))

    d = half(0)
    if kind == "Q8_0":
        q8 = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, cols)
        return {"qweight": torch.from_numpy(q8), "scales": d}
    qs = blocks[..., 4 if kind == "Q4_1" else 2 :]  # [rows, blocks, 16]: weight j | weight j + 16
    # The engine's byte k holds weights 2k (low nibble) and 2k + 1: for k < 8 the low nibbles of
    # bytes 2k and 2k + 1, for k >= 8 their high nibbles.
    even, odd = qs[..., 0::2], qs[..., 1::2]
    packed = np.concatenate(((even & 15) | ((odd & 15) << 4), (even >> 4) | (odd & 0xF0)), axis=-1)
    zeros = half(2) + 8 * d if kind == "Q4_1" else torch.zeros_like(d)
    return {"qweight": torch.from_numpy(packed.reshape(rows, cols // 2)), "scales": d, "zeros": zeros}


def read_tensors(path: str | Path, config: Any) -> dict[str, tuple[Path, GGUFTensor]]:
    """Every tensor of the file under its Hugging Face name; one of a type stratus cannot read,
    or one it does not know, is refused with its name (unknown names are kept as they are, and
    the loader's check refuses them)."""
    file = open_gguf(path)
    arch = _architecture(file)
    out: dict[str, tuple[Path, GGUFTensor]] = {}
    for name, tensor in file.tensors.items():
        if name == ROPE_FACTORS:  # read by config_dict
            continue
        kind = tensor.tensor_type.name
        if kind not in DEQUANTIZED:
            raise CheckpointError(
                f"{file.path}: tensor {name} is {kind}; stratus reads GGUF tensors of types "
                f"{', '.join(DEQUANTIZED)}"
            )
        heads = None
        if name in TOP_LEVEL:
            hf_name = TOP_LEVEL[name]
        elif (match := LAYER_TENSOR.fullmatch(name)) and match[2] in PER_LAYER:
            layer, part, suffix = match.groups()
            hf_name = f"model.layers.{layer}.{PER_LAYER[part]}.{suffix}"
            if arch in PERMUTED_QK and part in ("attn_q", "attn_k"):
                heads = config.num_heads if part == "attn_q" else config.num_kv_heads
        else:
            hf_name = name
        out[hf_name] = (file.path, GGUFTensor(tensor, heads))
    return out
