"""Model and engine configuration: what a checkpoint's config.json says, and how to run it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import gguf
from .types import CheckpointError as CheckpointError  # re-exported; in types.py for gguf.py

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",  # q/k RMSNorm per head (qk_norm)
    "Phi3ForCausalLM": "phi3",  # q/k/v and gate/up stored fused (fused_checkpoint)
    "Gemma2ForCausalLM": "gemma2",  # soft-capping, sliding-window layers, GeGLU, sandwich norms
}

ACTIVATIONS = ("silu", "gelu_pytorch_tanh")  # of the MLP's gate

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    family: str  # llama | mistral | qwen2 | qwen3 | phi3 | gemma2
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections carry a bias (Qwen2)
    sliding_window: int | None
    torch_dtype: str
    bos_token_id: int | None
    eos_token_ids: list[int] = field(default_factory=list)
    quantization: dict | None = None  # written by `stratus compress`
    qk_norm: bool = False  # an RMSNorm over each q and k head before rope (Qwen3)
    # the checkpoint stores qkv_proj and gate_up_proj already fused (Phi-3)
    fused_checkpoint: bool = False
    # Gemma 2's differences from Llama, each a flag:
    hidden_act: str = "silu"  # of the gate: silu | gelu_pytorch_tanh (GeGLU)
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight): Gemma's weights are stored as w - 1
    sandwich_norms: bool = False  # norms after attention and around the MLP too (4 per layer)
    embedding_scale: float | None = None  # embeddings times this (sqrt(hidden) for Gemma)
    attention_scale: float | None = None  # query scaling; None: head_dim ** -0.5
    attn_logit_softcap: float | None = None  # scores -> cap * tanh(scores / cap)
    final_logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    layer_windows: tuple[int | None, ...] | None = None  # per layer; None: sliding_window for all

    def window(self, layer: int) -> int | None:
        """Layer `layer`'s sliding window (None: it attends to the whole context)."""
        return self.layer_windows[layer] if self.layer_windows is not None else self.sliding_window

    @classmethod
    def from_dir(cls, path: Path) -> ModelConfig:
        """From a checkpoint directory's config.json, or from a GGUF file's metadata."""
        if gguf.is_gguf(path):
            return cls.from_dict(gguf.config_dict(path), source=str(path))
        file = path / "config.json"
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; a checkpoint directory needs config.json")
        try:
            raw = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file}: not valid JSON ({exc})") from exc
        return cls.from_dict(raw, source=str(file))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> ModelConfig:
        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise CheckpointError(
                f"{source}: architectures {archs} not supported; expected one of "
                f"{sorted(SUPPORTED_ARCHITECTURES)}"
            )
        family = SUPPORTED_ARCHITECTURES[arch]

        def need(key: str):
            if key not in raw:
                raise CheckpointError(f"{source}: missing required field {key!r} for {arch}")
            return raw[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        head_dim = int(raw.get("head_dim") or hidden // heads)
        if heads % kv_heads:
            raise CheckpointError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        rope_scaling = raw.get("rope_scaling")
        rope_theta = raw.get("rope_theta")
        rope_params = raw.get("rope_parameters")  # transformers 5 may nest rope settings here
        if isinstance(rope_params, dict):
            rope_theta = rope_theta or rope_params.get("rope_theta")
            if rope_params.get("rope_type", "default") != "default" and not rope_scaling:
                rope_scaling = rope_params
        if rope_scaling is not None:
            kind = rope_scaling.get("rope_type") or rope_scaling.get("type")
            if kind in (None, "default"):
                rope_scaling = None
            elif kind not in ("llama3", "linear", "factors"):  # factors: a GGUF file's rope_freqs
                raise CheckpointError(
                    f"{source}: rope_scaling type {kind!r} not supported; expected llama3 or linear"
                )
        eos = raw.get("eos_token_id")
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        sliding = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
        if family in ("qwen2", "qwen3") and not raw.get("use_sliding_window", False):
            sliding = None
        act = str(raw.get("hidden_activation") or raw.get("hidden_act") or "silu")
        if act not in ACTIVATIONS:
            raise CheckpointError(
                f"{source}: activation {act!r} not supported; expected one of {ACTIVATIONS}"
            )
        gemma = family == "gemma2"
        layer_windows = None
        if gemma:  # alternate layers slide (transformers' default layer_types), the others see all
            layers = int(need("num_hidden_layers"))
            types = raw.get("layer_types") or [
                "sliding_attention" if (n + 1) % 2 else "full_attention" for n in range(layers)
            ]
            layer_windows = tuple(
                int(sliding) if sliding and kind == "sliding_attention" else None for kind in types
            )
            sliding = None
        if float(raw.get("partial_rotary_factor") or 1.0) != 1.0:
            raise CheckpointError(
                f"{source}: partial_rotary_factor={raw['partial_rotary_factor']} not supported "
                "(rotary embeddings over the whole head only)"
            )
        return cls(
            architecture=arch,
            family=family,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta or 10000.0),
            rope_scaling=rope_scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=family == "qwen2" or bool(raw.get("attention_bias", False)),
            sliding_window=int(sliding) if sliding else None,
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            quantization=raw.get("quantization"),
            qk_norm=family == "qwen3",
            fused_checkpoint=family == "phi3",
            hidden_act=act,
            norm_offset=1.0 if gemma else 0.0,
            sandwich_norms=gemma,
            embedding_scale=hidden**0.5 if gemma else None,
            attention_scale=float(raw["query_pre_attn_scalar"]) ** -0.5 if gemma else None,
            attn_logit_softcap=raw.get("attn_logit_softcapping") if gemma else None,
            final_logit_softcap=raw.get("final_logit_softcapping") if gemma else None,
            layer_windows=layer_windows,
        )

    def num_parameters(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + (4 if self.sandwich_norms else 2) * h
        per_layer += 2 * self.head_dim if self.qk_norm else 0
        if self.attention_bias:
            per_layer += q + 2 * kv
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + self.num_layers * per_layer + h + head


@dataclass
class EngineConfig:
    """How to run one replica. Defaults suit a CPU; every field is a `stratus serve` knob."""

    dtype: str = "auto"  # auto: float32 on CPU (bf16 is slow without AVX512-BF16), checkpoint dtype on GPU
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    block_size: int = 16  # tokens per KV block
    # The KV block pool (memory.py): exactly num_kv_blocks, else kv_cache_memory_mb, else this
    # fraction of the memory available after the weights (None: 0.25 on a CPU, 0.8 on CUDA),
    # capped at max_num_seqs full-length sequences.
    kv_cache_memory_mb: int | None = None
    num_kv_blocks: int | None = None
    kv_cache_memory_fraction: float | None = None
    max_num_seqs: int = 64  # sequences in one batch
    max_num_batched_tokens: int = 512  # per-step token budget (prefill chunks + decodes)
    max_model_len: int | None = None  # context window; default: the model's
    enable_prefix_caching: bool = True
    num_threads: int | None = None  # torch intra-op threads on CPU
    # Float32 decode attention on a CPU in the C kernel of kernels/decode_attention.c, built on
    # first use (native.py); without a C compiler the PyTorch path runs instead.
    native_kernels: bool = True
    seed: int = 0  # for unseeded sampling
    # A GGUF file's Q8_0, Q4_0 and Q4_1 tensors are served as quantized layers (gguf_blocks.py);
    # True: dequantized to the serving dtype at load, like its other types.
    gguf_dequantize: bool = False
    # Pace the step loop so the whole engine generates at most this many output tokens per
    # second, shared by every running sequence: a replica of exactly that capacity (benchmarks
    # of routing over unequal replicas; sharing a machine politely). None: as fast as it can.
    max_tokens_per_second: float | None = None
    # LoRA adapters held in memory at once (engine/lora.py): an LRU, and the most distinct
    # adapters one batch can mix; an adapter evicted is read again from disk when next used.
    max_loras: int = 8
    # One replica split over tensor_parallel_size x pipeline_parallel_size processes
    # (engine/parallel/): each rank holds 1/N of each layer's weights (TP) or a run of whole
    # layers (PP). parallel_timeout_s bounds every collective, so a dead or hung rank takes the
    # replica out (and it is restarted) instead of hanging it.
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    parallel_timeout_s: float = 60.0
    # Refuse, before loading, a replica whose weights need more than this per process (a
    # container's memory budget): the message says which tensor_parallel_size would fit.
    max_weight_memory_mb: int | None = None

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            size = getattr(self, name)
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 64:
                raise ValueError(f"{name} must be an integer from 1 to 64, got {size!r}")
        timeout = self.parallel_timeout_s
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout < 86400:
            raise ValueError(f"parallel_timeout_s must be a number of seconds in (0, 86400), got {timeout!r}")
        rate = self.max_tokens_per_second
        number = isinstance(rate, (int, float)) and not isinstance(rate, bool)
        if rate is not None and not (number and 0 < rate < float("inf")):
            raise ValueError(f"max_tokens_per_second must be a positive number, got {rate!r}")
        if not isinstance(self.max_loras, int) or self.max_loras < 1:
            raise ValueError(f"max_loras must be an integer >= 1, got {self.max_loras!r}")
        fraction = self.kv_cache_memory_fraction
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {fraction!r}")
        if self.kv_cache_memory_mb is not None and self.kv_cache_memory_mb < 1:
            raise ValueError(f"kv_cache_memory_mb must be at least 1, got {self.kv_cache_memory_mb}")

    @property
    def world_size(self) -> int:
        """Processes that hold one replica: tensor x pipeline parallel ranks."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_dtype(self, model: ModelConfig, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            if device.type == "cpu":
                return torch.float32
            return DTYPES.get(model.torch_dtype, torch.bfloat16)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or auto, got {self.dtype!r}")
        return DTYPES[self.dtype]
