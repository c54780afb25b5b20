"""LoRA: the --lora grammar, an untrained adapter changes nothing, PEFT's names."""

import json

import pytest
import torch

from stratus.train.lora import LoraSpec, adapter_state_dict, apply_lora, save_adapter
from stratus.train.model import load_causal_lm


def test_parse():
    spec = LoraSpec.parse("r=16,alpha=32,targets=q,k,v,o,gate,up,down")
    assert (spec.r, spec.alpha, spec.scaling) == (16, 32.0, 2.0)
    assert spec.targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert LoraSpec.parse("targets=q,v,r=4").targets == ("q_proj", "v_proj")
    assert LoraSpec.parse("r=4").alpha == 8.0
    for bad in ("r=0", "targets=q,x", "rank=4", "q"):
        with pytest.raises(ValueError, match="--lora"):
            LoraSpec.parse(bad)


def test_untrained_adapter_changes_nothing_and_uses_peft_names(train_llama, tmp_path):
    ids = torch.randint(0, 512, (1, 12))
    model = load_causal_lm(train_llama)
    with torch.no_grad():
        before = model(ids)
    spec = LoraSpec.parse("r=4,alpha=8,targets=q,v,down")
    wrapped = apply_lora(model, spec)
    assert len(wrapped) == 3 * 2  # three targets in each of two layers
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, rtol=0, atol=0)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    keys = set(adapter_state_dict(model))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    save_adapter(model, spec, str(train_llama), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
