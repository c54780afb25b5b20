"""LoRA adapters in the standard PEFT format, applied per row so that one batch mixes adapters.

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors`, as PEFT's
`save_pretrained` (and `stratus train --lora`) write them. `load_adapter` reads one, checks every
tensor against the base model's shapes and refuses what this engine does not apply (DoRA,
`modules_to_save`, LoRA on the embeddings or the head, per-module rank patterns, ...) with a
message that names it.

The engine's projections are fused (q/k/v in `qkv_proj`, gate/up in `gate_up_proj`), so an
adapter's A matrices of one fused projection are stacked ([in, R], R the sum of their ranks) and
its B matrices placed block-diagonally ([R, out], zero where a part has no adapter), with the
scaling folded in: one matmul pair per fused projection gives exactly each part's
`B_i (A_i x) * scaling`. A step's rows are grouped by adapter (`LoraBatch`): each group pays one
matmul pair per projection (S-LoRA/Punica's segmented LoRA, in plain PyTorch), rows without an
adapter pay nothing, and a batch with no adapter row never builds a `LoraBatch` at all.

`AdapterStore` keeps the registered adapters (name -> directory) and an LRU of resident ones
(their tensors in memory, at most `max_loras`); a running sequence pins its adapter, so a
resident adapter is evicted only when no running sequence uses it, and a request whose adapter
cannot be made resident waits in the queue (engine/scheduler.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .config import ModelConfig
from .types import CheckpointError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
DEFAULT_MAX_LORAS = 8

# A PEFT target module -> (the engine's fused projection, which part of it, in order).
TARGETS = {
    "q_proj": ("qkv", 0),
    "k_proj": ("qkv", 1),
    "v_proj": ("qkv", 2),
    "o_proj": ("o", 0),
    "gate_proj": ("gate_up", 0),
    "up_proj": ("gate_up", 1),
    "down_proj": ("down", 0),
}
PROJECTIONS = ("qkv", "o", "gate_up", "down")

# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight (".default" in some versions)
_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$"
)

# adapter_config.json options that change what the adapter computes and that this engine does
# not apply: refused rather than served wrong. Each maps to the value that means "off".
_UNSUPPORTED: dict[str, tuple[object, str]] = {
    "use_dora": (False, "DoRA (use_dora)"),
    "modules_to_save": (None, "modules_to_save (fully trained copies of base modules)"),
    "rank_pattern": ({}, "rank_pattern (per-module ranks)"),
    "alpha_pattern": ({}, "alpha_pattern (per-module alphas)"),
    "fan_in_fan_out": (False, "fan_in_fan_out (Conv1D layers)"),
    "lora_bias": (False, "lora_bias"),
    "layer_replication": (None, "layer_replication"),
    "trainable_token_indices": (None, "trainable_token_indices (trained embedding rows)"),
    "target_parameters": (None, "target_parameters"),
    "alora_invocation_tokens": (None, "activated LoRA (alora_invocation_tokens)"),
    "megatron_config": (None, "megatron_config"),
    "use_qalora": (False, "QA-LoRA (use_qalora)"),
    "use_bdlora": (None, "use_bdlora"),
    "arrow_config": (None, "Arrow routing (arrow_config)"),
    "kasa_config": (None, "kasa_config"),
    "monteclora_config": (None, "monteclora_config"),
    "velora_config": (None, "velora_config"),
}


class AdapterError(CheckpointError):
    """An adapter that cannot be served; the message names the file and what is wrong."""


@dataclass(frozen=True)
class AdapterConfig:
    """What adapter_config.json says about how to apply the tensors."""

    r: int
    lora_alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]
    base_model: str | None

    @property
    def scaling(self) -> float:
        """PEFT's: alpha / r, or alpha / sqrt(r) for rank-stabilized LoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def read(cls, path: Path) -> AdapterConfig:
        file = path / CONFIG_FILE
        if not file.is_file():
            raise AdapterError(f"{file}: missing; a PEFT LoRA adapter directory needs {CONFIG_FILE}")
        try:
            raw = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AdapterError(f"{file}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise AdapterError(f"{file}: expected a JSON object")
        kind = str(raw.get("peft_type", "LORA")).upper()
        if kind != "LORA":
            raise AdapterError(f"{file}: peft_type {kind!r} is not served; only LORA adapters are")
        for key, (off, what) in _UNSUPPORTED.items():
            value = raw.get(key, off)
            if value not in (off, None, [], {}, False):
                raise AdapterError(f"{file}: {what} is not supported by stratus; {key}={value!r}")
        if raw.get("bias", "none") != "none":
            raise AdapterError(f"{file}: bias={raw['bias']!r} (trained biases) is not supported; need 'none'")
        targets = raw.get("target_modules") or []
        if isinstance(targets, str):  # a regular expression over module names
            targets = [t for t in TARGETS if re.search(targets, t)]
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise AdapterError(
                f"{file}: target_modules {unknown} are not served; LoRA applies to {', '.join(TARGETS)}"
            )
        try:
            r = int(raw["r"])
            alpha = float(raw.get("lora_alpha", r))
        except (KeyError, TypeError, ValueError):
            raise AdapterError(f"{file}: needs an integer 'r' and a number 'lora_alpha'") from None
        if r < 1 or not math.isfinite(alpha):
            raise AdapterError(f"{file}: r must be >= 1 and lora_alpha finite, got r={r}, lora_alpha={alpha}")
        return cls(
            r, alpha, bool(raw.get("use_rslora", False)), tuple(targets), raw.get("base_model_name_or_path")
        )


def part_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each target module of the base model."""
    h, i = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


@dataclass(eq=False)
class LoraWeights:
    """One adapter, resident: per layer, per fused projection, (A^T [in, R], B^T * scaling [R, out])."""

    name: str
    path: Path
    config: AdapterConfig
    key: bytes  # digest of its files: prefix-cache blocks of different adapters never match
    layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]
    pins: int = 0  # running sequences that use it

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for ab in layer.values() for t in ab)


def load_adapter(
    name: str, path: str | Path, base: ModelConfig, dtype: torch.dtype, device: torch.device
) -> LoraWeights:
    """Read and check a PEFT LoRA adapter against the base model `base`; raises AdapterError."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: not a directory; a PEFT adapter is a directory with {CONFIG_FILE}")
    config = AdapterConfig.read(path)
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise AdapterError(f"{file}: missing; stratus reads adapters saved as safetensors ({WEIGHTS_FILE})")
    digest = hashlib.blake2b(digest_size=16)
    digest.update((path / CONFIG_FILE).read_bytes())
    digest.update(file.read_bytes())
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                m = _KEY.match(key)
                if m is None:
                    raise AdapterError(
                        f"{file}: tensor {key!r} is not a LoRA A/B weight of a decoder layer's "
                        f"{', '.join(TARGETS)}; stratus does not serve it"
                    )
                layer, module, which = int(m.group(1)), m.group(2), m.group(3)
                if module not in TARGETS:
                    raise AdapterError(f"{file}: {key!r}: LoRA on {module} is not supported")
                if layer >= base.num_layers:
                    raise AdapterError(f"{file}: {key!r}: the base model has {base.num_layers} layers")
                pairs.setdefault((layer, module), {})[which] = handle.get_tensor(key)
    except AdapterError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise AdapterError(f"{file}: not a readable safetensors file ({exc})") from None
    if not pairs:
        raise AdapterError(f"{file}: holds no LoRA weights")
    shapes = part_shapes(base)
    for (layer, module), ab in pairs.items():
        where = f"{file}: layer {layer} {module}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{where}: has lora_{next(iter(ab))} without its pair")
        fan_in, fan_out = shapes[module]
        a, b = ab["A"], ab["B"]
        if (
            a.dim() != 2
            or b.dim() != 2
            or a.shape[1] != fan_in
            or b.shape[0] != fan_out
            or a.shape[0] != b.shape[1]
        ):
            raise AdapterError(
                f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit the base "
                f"model ({fan_in} -> {fan_out}, expected lora_A [r, {fan_in}] and lora_B [{fan_out}, r]): "
                "was it trained on another model?"
            )
        if a.shape[0] != config.r:
            raise AdapterError(f"{where}: rank {a.shape[0]}, but {CONFIG_FILE} says r={config.r}")
    layers = [_fuse(pairs, n, shapes, config.scaling, dtype, device) for n in range(base.num_layers)]
    return LoraWeights(name, path, config, digest.digest(), layers)


def _fuse(
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]],
    layer: int,
    shapes: dict[str, tuple[int, int]],
    scaling: float,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    fused: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for projection in PROJECTIONS:
        parts = sorted((i, m) for m, (p, i) in TARGETS.items() if p == projection)
        present = [(m, pairs[(layer, m)]) for _, m in parts if (layer, m) in pairs]
        if not present:
            continue
        rank = sum(ab["A"].shape[0] for _, ab in present)
        out = sum(shapes[m][1] for _, m in parts)
        a_t = torch.cat([ab["A"].float() for _, ab in present]).t()  # [in, R]
        b_t = torch.zeros(rank, out)  # [R, out], block-diagonal over the parts
        row, col = 0, 0
        for _, m in parts:
            ab = pairs.get((layer, m))
            if ab is not None:
                r = ab["A"].shape[0]
                b_t[row : row + r, col : col + shapes[m][1]] = ab["B"].float().t() * scaling
                row += r
            col += shapes[m][1]
        fused[projection] = (
            a_t.to(device=device, dtype=dtype).contiguous(),
            b_t.to(device=device, dtype=dtype).contiguous(),
        )
    return fused


@dataclass
class LoraBatch:
    """Which rows of a step's flattened batch use which adapter: `groups` of (adapter, rows),
    rows a slice when they are consecutive, else an index tensor."""

    groups: list[tuple[LoraWeights, slice | torch.Tensor]] = field(default_factory=list)

    @classmethod
    def of_rows(cls, rows: list[LoraWeights | None], device: torch.device) -> LoraBatch | None:
        """From each row's adapter (None: the base model); None when no row has one."""
        by_adapter: dict[int, tuple[LoraWeights, list[int]]] = {}
        for i, weights in enumerate(rows):
            if weights is not None:
                by_adapter.setdefault(id(weights), (weights, []))[1].append(i)
        if not by_adapter:
            return None
        groups: list[tuple[LoraWeights, slice | torch.Tensor]] = []
        for weights, idx in by_adapter.values():
            if idx[-1] - idx[0] + 1 == len(idx):
                groups.append((weights, slice(idx[0], idx[-1] + 1)))
            else:
                groups.append((weights, torch.tensor(idx, dtype=torch.long, device=device)))
        return cls(groups)

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> None:
        """y [T, out] += each group's B (A x) for the rows of that group, in place."""
        for weights, rows in self.groups:
            ab = weights.layers[layer].get(projection)
            if ab is None:
                continue
            a_t, b_t = ab
            if isinstance(rows, slice):  # the add fused into the second matmul
                y[rows].addmm_(x[rows] @ a_t, b_t)
            else:
                y.index_add_(0, rows, (x.index_select(0, rows) @ a_t) @ b_t)


class AdapterStore:
    """The adapters a replica serves: registered by name, at most `max_loras` resident (LRU)."""

    def __init__(self, base: ModelConfig, dtype: torch.dtype, device: torch.device, max_loras: int):
        if max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        self.base = base
        self.dtype = dtype
        self.device = device
        self.max_loras = max_loras
        self.paths: dict[str, Path] = {}
        self.resident: OrderedDict[str, LoraWeights] = OrderedDict()
        self.loads = 0  # adapters read from disk (registrations and reloads after eviction)

    def register(self, name: str, path: str | Path) -> LoraWeights:
        """Read and check the adapter now (raises AdapterError, changing nothing), then serve it as
        `name`; a name already registered is replaced (running sequences keep the old weights)."""
        weights = self._read(name, Path(path))
        self.paths[name] = Path(path)
        self.resident.pop(name, None)
        if self._make_room():
            self.resident[name] = weights
        return weights

    def unregister(self, name: str) -> bool:
        """Stop serving `name`; sequences already running with it finish with their weights."""
        self.resident.pop(name, None)
        return self.paths.pop(name, None) is not None

    def __contains__(self, name: str) -> bool:
        return name in self.paths

    def acquire(self, name: str) -> LoraWeights | None:
        """The resident weights of `name`, pinned for a running sequence, read again from disk if
        they were evicted; None when all `max_loras` resident adapters are pinned (the sequence
        waits). Raises AdapterError when `name` is no longer registered or unreadable."""
        weights = self.resident.get(name)
        if weights is None:
            path = self.paths.get(name)
            if path is None:
                raise AdapterError(f"the adapter {name!r} was unloaded")
            if not self._make_room():
                return None
            weights = self.resident[name] = self._read(name, path)
        self.resident.move_to_end(name)
        weights.pins += 1
        return weights

    @staticmethod
    def release(weights: LoraWeights) -> None:
        weights.pins -= 1

    def _make_room(self) -> bool:
        """Evict least recently used unpinned adapters until one more fits; False if none can go."""
        while len(self.resident) >= self.max_loras:
            victim = next((n for n, w in self.resident.items() if w.pins == 0), None)
            if victim is None:
                return False
            del self.resident[victim]
        return True

    def _read(self, name: str, path: Path) -> LoraWeights:
        self.loads += 1
        return load_adapter(name, path, self.base, self.dtype, self.device)

    def describe(self) -> list[dict]:
        """Per registered adapter: its name, directory, rank, alpha, and whether it is resident."""
        out = []
        for name, path in self.paths.items():
            weights = self.resident.get(name)
            out.append({"name": name, "path": str(path), "resident": weights is not None})
        return out
