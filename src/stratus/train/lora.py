"""LoRA: low-rank adapters on chosen linear layers, written in PEFT's format.

`y = base(x) + (alpha / r) * B(A(dropout(x)))`, with A initialised as PEFT does (Kaiming
uniform) and B at zero, so an untrained adapter changes nothing. An adapter directory holds
`adapter_config.json` and `adapter_model.safetensors` with PEFT's keys
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`): PEFT, transformers and
`stratus serve` read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

# --lora targets=... short names -> the module name in each decoder layer
TARGETS = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=tuple(TARGETS.values()))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`r=16,alpha=32,dropout=0.05,targets=q,k,v,o,gate,up,down` (any subset, any order;
        the values after `targets=` run to the next `key=`). An empty text: the defaults."""
        values: dict[str, list[str]] = {}
        key = None
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" in part:
                key, _, value = part.partition("=")
                key = key.strip()
                if key not in ("r", "alpha", "dropout", "targets"):
                    raise ValueError(f"--lora: unknown key {key!r}; expected r, alpha, dropout, targets")
                values[key] = [value.strip()]
            elif key == "targets":
                values[key].append(part)
            else:
                raise ValueError(f"--lora: {part!r} is not key=value (e.g. r=16,alpha=32,targets=q,v)")
        try:
            r = int(values.get("r", ["16"])[0])
            alpha = float(values.get("alpha", [str(2 * r)])[0])
            dropout = float(values.get("dropout", ["0"])[0])
        except ValueError as exc:
            raise ValueError(f"--lora: {exc}") from None
        if r < 1 or alpha <= 0 or not 0 <= dropout < 1:
            raise ValueError("--lora: r must be >= 1, alpha > 0 and 0 <= dropout < 1")
        targets = []
        for name in values.get("targets", list(TARGETS)):
            full = TARGETS.get(name, name)
            if full not in TARGETS.values():
                raise ValueError(f"--lora: unknown target {name!r}; expected some of {', '.join(TARGETS)}")
            if full not in targets:
                targets.append(full)
        return cls(r=r, alpha=alpha, dropout=dropout, targets=tuple(targets))


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, spec: LoraSpec):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        kwargs = {"device": base.weight.device, "dtype": torch.float32}
        self.lora_A = nn.Linear(base.in_features, spec.r, bias=False, **kwargs)
        self.lora_B = nn.Linear(spec.r, base.out_features, bias=False, **kwargs)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()
        self.scaling = spec.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.lora_B(self.lora_A(self.dropout(x).to(self.lora_A.weight.dtype)))
        return self.base(x) + (delta * self.scaling).to(x.dtype)


def apply_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Freeze `model` and wrap each target linear of every decoder layer; the wrapped modules'
    names, in order. Only the adapters' A and B train."""
    model.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in spec.targets and isinstance(child, nn.Linear) and ".layers." in f".{name}.":
                setattr(module, child_name, LoRALinear(child, spec))
                wrapped.append(f"{name}.{child_name}")
    if not wrapped:
        raise ValueError(f"--lora: no layer named {list(spec.targets)} in this model")
    return wrapped


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights under PEFT's names."""
    return {
        PEFT_PREFIX + name: p.detach().contiguous().clone()
        for name, p in model.named_parameters()
        if ".lora_A." in name or ".lora_B." in name
    }


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            params[key.removeprefix(PEFT_PREFIX)].copy_(value)


def adapter_config(spec: LoraSpec, base_model: str) -> dict:
    """PEFT's LoraConfig, as `save_pretrained` writes it (the fields its loaders read)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": sorted(spec.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def save_adapter(model: nn.Module, spec: LoraSpec, base_model: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        adapter_state_dict(model), str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"}
    )
    (out_dir / "adapter_config.json").write_text(
        json.dumps(adapter_config(spec, base_model), indent=2) + "\n"
    )
