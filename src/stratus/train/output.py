"""What a finished job leaves in its output directory: a Hugging Face checkpoint (full
fine-tuning) that transformers and `stratus serve` load, or a PEFT adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from stratus.engine import gguf
from stratus.engine.config import DTYPES, SUPPORTED_ARCHITECTURES
from stratus.engine.tokenizer import Tokenizer

from .lora import LoraSpec, save_adapter
from .model import CausalLM

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
)


def save_checkpoint(model: CausalLM, source: Path, out_dir: Path) -> None:
    """config.json and the tokenizer files of `source` (a directory, or a GGUF file's metadata),
    and the weights in the source's dtype."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if gguf.is_gguf(source):
        config = gguf.config_dict(source)
        tokenizer = Tokenizer(source)
        (out_dir / "tokenizer.json").write_text(tokenizer.to_json())
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "chat_template": tokenizer.chat_template,
        }
        (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        config["torch_dtype"] = "float32"  # dequantized: the weights trained are float32
        config["model_type"] = SUPPORTED_ARCHITECTURES[config["architectures"][0]]  # transformers' key
    else:
        config = json.loads((source / "config.json").read_text())
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out_dir / name)
    dtype_name = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    dtype = DTYPES.get(dtype_name, torch.float32)
    state = {k: v.to("cpu", dtype).contiguous() for k, v in model.hf_state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def save_output(model: CausalLM, spec_lora: LoraSpec | None, source: Path, out_dir: Path) -> None:
    if spec_lora is None:
        save_checkpoint(model, source, out_dir)
    else:
        save_adapter(model, spec_lora, str(source.resolve()), out_dir)
